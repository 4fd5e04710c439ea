"""Controls for the experiments: GGLM's pipeline with a mask GGLM did not choose.

A fairseq user directory (``--user-dir scripts/experiments/mask_controls``); importing it
registers the plugin as well. ``--criterion gglm_control_masked_cross_entropy`` trains
exactly like ``gradient_masked_cross_entropy`` (same clean gradient, alignments, record,
renormalisation) but masks

- ``--mask-control labels``: the pairs whose label in ``--mask-labels`` is not ``clean``
  (the injected-noise labels: a perfect mask, the upper bound of any masking method);
- ``--mask-control random``: each sentence with probability ``--mask-random-rate``.

Side by side with the baseline and GGLM they separate what masking costs (random: fewer
tokens per update) from what choosing well gains (labels) and how far GGLM's choice is from
perfect. Sentence granularity only.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from torch import Tensor

from gglm_fairseq.criterions.gradient_masked_cross_entropy import (
    GradientMaskedCrossEntropyConfig,
    GradientMaskedCrossEntropyCriterion,
)
from gglm_fairseq.noise import CLEAN
from gglm_fairseq.record import ExampleRecord


@dataclass
class ControlMaskConfig(GradientMaskedCrossEntropyConfig):
    mask_control: ChoiceEnum(["labels", "random"]) = field(
        default="labels", metadata={"help": "which mask replaces GGLM's"}
    )
    mask_labels: Optional[str] = field(
        default=None,
        metadata={"help": "one label per training pair, in corpus order ('clean' is kept)"},
    )
    mask_random_rate: float = field(
        default=0.4, metadata={"help": "probability that a sentence is masked (random)"}
    )


@register_criterion("gglm_control_masked_cross_entropy", dataclass=ControlMaskConfig)
class ControlMaskedCrossEntropy(GradientMaskedCrossEntropyCriterion):
    def __init__(self, task: Any, cfg: ControlMaskConfig) -> None:
        super().__init__(task, cfg)
        if str(cfg.gglm_granularity) != "sentence":
            raise ValueError("mask controls work at sentence granularity")
        self.control = str(cfg.mask_control)
        self.noisy: Optional[Tensor] = None
        if self.control == "labels":
            if not cfg.mask_labels:
                raise ValueError("--mask-control labels needs --mask-labels FILE")
            with open(cfg.mask_labels, encoding="utf-8") as labels:
                self.noisy = torch.tensor([line.strip() != CLEAN for line in labels])
        elif not 0.0 <= cfg.mask_random_rate <= 1.0:
            raise ValueError("--mask-random-rate must be in [0, 1]")

    def unit_mask(
        self, scores: Tensor, sample: Dict[str, Any], record: Optional[ExampleRecord] = None
    ) -> Tensor:
        if self.noisy is not None:
            ids = sample["id"].cpu()
            if int(ids.max()) >= len(self.noisy):
                raise ValueError(
                    f"--mask-labels has {len(self.noisy)} lines, fewer than the training set"
                )
            return (~self.noisy[ids]).to(device=scores.device, dtype=scores.dtype)
        keep = torch.rand(scores.shape, device=scores.device) >= self.cfg.mask_random_rate
        return keep.to(scores.dtype)
