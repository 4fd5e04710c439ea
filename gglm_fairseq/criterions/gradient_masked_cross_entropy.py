"""Label-smoothed cross-entropy masked by gradient alignment with a clean batch (GGLM).

The criterion owns the loss and the mask: :meth:`masked_forward` takes the update's clean
gradient (from the task's :mod:`gglm_fairseq.clean_gradient` estimator) and returns the masked
loss with the per-example decisions; the task records those once the update is applied. The
alignment math lives in :mod:`gglm_fairseq.alignment`.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor, nn

from gglm_fairseq.alignment import (
    AlignedLoss,
    GhostUnsupportedError,
    MaskRule,
    get_engine,
    ghost_problem,
    similarity,
    unit_weights,
)
from gglm_fairseq.clean_gradient import CleanGradient
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import ExampleRecord

logger = logging.getLogger(__name__)

ENGINE_CHOICES = ChoiceEnum(["auto", "ghost", "jvp", "vmap", "loop"])
TORCH_DDP_BACKENDS = ("c10d", "pytorch_ddp")


@dataclass
class Decisions:
    """What the mask decided for one micro-batch, per sentence (on the CPU)."""

    ids: Tensor  # (B,) dataset example ids
    alignment: Tensor  # (B,) sentence alignment (token alignments summed)
    masked: Tensor  # (B,) masked share of the sentence's tokens (1: the whole sentence)


@dataclass
class GradientMaskedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    gglm_engine: ENGINE_CHOICES = field(
        default="auto",
        metadata={
            "help": "how alignments are computed (all exact): ghost = book-keeping, per-layer "
            "terms from one activation backward, weight gradients once after the mask; jvp "
            "= forward-mode, one dual forward; vmap = torch.func per-sample gradients; loop "
            "= one backward per example; auto = ghost at sentence level, jvp at token level, "
            "vmap for gradient norms, and jvp where ghost has no rule for a layer"
        },
    )
    gglm_vmap_chunk_size: int = field(
        default=16,
        metadata={"help": "examples (or tokens) per vmap chunk; memory ~ chunk x params"},
    )
    gglm_granularity: ChoiceEnum(["sentence", "token"]) = field(
        default="sentence",
        metadata={"help": "mask whole sentences or single target tokens"},
    )
    gglm_similarity: ChoiceEnum(["dot", "cosine"]) = field(
        default="dot",
        metadata={
            "help": "threshold the dot product <grad l_i, g_clean> or its cosine (cosine "
            "with a non-zero threshold needs per-example gradient norms: vmap or loop)"
        },
    )
    gglm_threshold: float = field(
        default=0.0,
        metadata={"help": "keep an example (token) when its similarity is above this"},
    )
    gglm_threshold_mode: ChoiceEnum(["absolute", "batch-mean", "batch-quantile"]) = field(
        default="absolute",
        metadata={
            "help": "absolute = the score is compared with --gglm-threshold; batch-mean = with "
            "the micro-batch's mean score plus --gglm-threshold; batch-quantile = the lowest "
            "--gglm-threshold-quantile share of the micro-batch's sentences is masked (ours; "
            "batch modes at sentence granularity; batch-quantile with threshold 0)"
        },
    )
    gglm_threshold_quantile: float = field(
        default=0.4,
        metadata={
            "help": "share q in [0, 1) masked by --gglm-threshold-mode batch-quantile: the "
            "floor(q * sentences) lowest scores of each micro-batch"
        },
    )
    gglm_weighting: ChoiceEnum(["mask", "soft"]) = field(
        default="mask",
        metadata={
            "help": "mask = weight 1 above the threshold, 0 elsewhere; soft = L2RW-style "
            "weights max(s_i - threshold, 0) / their mean over the micro-batch's sentences "
            "(ours; sentence granularity; the sample size is the weighted target-token "
            "count, and a sentence counts as masked in logs and record when its weight is 0)"
        },
    )
    gglm_keep_tokens: int = field(
        default=0,
        metadata={
            "help": "of the sentences above the threshold, train on at most N target tokens "
            "per micro-batch, whole sentences in descending score order until the next does "
            "not fit (ours; sentence granularity, mask weighting): with --max-tokens above N "
            "the update stays full after masking; 0: off"
        },
    )
    gglm_warmup_updates: int = field(
        default=0,
        metadata={"help": "train unmasked for this many updates before masking starts"},
    )
    gglm_interval: int = field(
        default=1,
        metadata={"help": "after warm-up, mask on every K-th update; plain in between"},
    )
    gglm_score: ChoiceEnum(["current", "running"]) = field(
        default="current",
        metadata={
            "help": "decide on the alignment of this update (current) or on the example's "
            "mean alignment over every time it was seen, this one included (running; "
            "sentence granularity, dot similarity)"
        },
    )
    gglm_alignment_without_dropout: bool = field(
        default=False,
        metadata={
            "help": "compute alignments in a separate pass with dropout off (costs a "
            "forward); by default they come from the training forward itself, so the mask "
            "judges the same dropout noise as the loss it masks"
        },
    )
    gglm_no_renormalize: bool = field(
        default=False,
        metadata={
            "help": "normalise the masked loss by all target tokens (sentences with "
            "--sentence-avg) instead of the unmasked ones"
        },
    )
    # Filled from fairseq's distributed configuration (no flags of their own).
    ddp_backend: str = II("distributed_training.ddp_backend")
    find_unused_parameters: bool = II("distributed_training.find_unused_parameters")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


def refused_engines(cfg: GradientMaskedCrossEntropyConfig) -> Tuple[str, ...]:
    """The engines that cannot run under the run's data-parallel wrapper. torch's
    DistributedDataParallel with find_unused_parameters passes the model's output through
    an autograd.Function with no forward-mode or functorch rule (jvp, vmap fail), and marks
    every parameter the output's graph does not reach as ready at once, which is all of them
    under ghost's detached forward (its weight gradients then mark them twice). Measured in
    tests/test_data_parallel.py; without find_unused_parameters every engine runs."""
    # A config built by hand (scripts) holds the interpolation strings: nothing is refused.
    if (
        str(cfg.ddp_backend) in TORCH_DDP_BACKENDS
        and cfg.find_unused_parameters is True
        and cfg.distributed_world_size > 1
    ):
        return ("ghost", "jvp", "vmap")
    return ()


def _padded(tokens: Tensor, pad: int) -> Tensor:
    return torch.cat([tokens, tokens.new_full((tokens.size(0), 1), pad)], dim=1)


def _with_distinct_lengths(sample: Dict[str, Any], pad: int) -> Dict[str, Any]:
    """The sample with one more padding position on a side whose length equals the batch
    size, so that every op of the ghost pass has a single batch axis. Exact: padded keys are
    masked, positions count non-padding tokens only, and a padded target costs nothing."""
    rows = sample["target"].size(0)
    net_input = sample["net_input"]
    src, prev = net_input["src_tokens"], net_input["prev_output_tokens"]
    if src.size(1) != rows and prev.size(1) != rows:
        return sample
    net_input = dict(net_input, src_tokens=_padded(src, pad) if src.size(1) == rows else src)
    if prev.size(1) == rows:
        net_input["prev_output_tokens"] = _padded(prev, pad)
        sample = dict(sample, target=_padded(sample["target"], pad))
    return dict(sample, net_input=net_input)


def mask_rule(cfg: GradientMaskedCrossEntropyConfig) -> MaskRule:
    """The rule from scores to weights, after refusing combinations without a meaning."""
    rule = MaskRule(
        threshold=cfg.gglm_threshold,
        threshold_mode=str(cfg.gglm_threshold_mode),
        quantile=cfg.gglm_threshold_quantile,
        weighting=str(cfg.gglm_weighting),
        keep_tokens=cfg.gglm_keep_tokens,
    )
    sentence_only = {
        "--gglm-keep-tokens": rule.keep_tokens > 0,
        "--gglm-weighting soft": rule.weighting == "soft",
        f"--gglm-threshold-mode {rule.threshold_mode}": rule.threshold_mode != "absolute",
    }
    for flag, used in sentence_only.items():
        if used and str(cfg.gglm_granularity) != "sentence":
            raise GGLMUserError(f"{flag} needs --gglm-granularity sentence")
    if rule.keep_tokens < 0:
        raise GGLMUserError("--gglm-keep-tokens must be >= 0")
    if rule.keep_tokens and rule.weighting == "soft":
        raise GGLMUserError("--gglm-keep-tokens selects whole sentences: use --gglm-weighting mask")
    if not 0.0 <= rule.quantile < 1.0:
        raise GGLMUserError("--gglm-threshold-quantile must be in [0, 1)")
    if rule.threshold_mode == "batch-quantile" and rule.threshold != 0.0:
        raise GGLMUserError(
            "--gglm-threshold-mode batch-quantile masks a share, not below a threshold: "
            "leave --gglm-threshold at 0"
        )
    if rule.threshold_mode == "batch-quantile" and rule.weighting == "soft":
        raise GGLMUserError(
            "--gglm-weighting soft needs a threshold: use --gglm-threshold-mode absolute "
            "or batch-mean"
        )
    return rule


@register_criterion("gradient_masked_cross_entropy", dataclass=GradientMaskedCrossEntropyConfig)
class GradientMaskedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task: Any, cfg: GradientMaskedCrossEntropyConfig) -> None:
        super().__init__(
            task,
            cfg.sentence_avg,
            cfg.label_smoothing,
            ignore_prefix_size=cfg.ignore_prefix_size,
            report_accuracy=cfg.report_accuracy,
        )
        for name in ("gglm_interval", "gglm_vmap_chunk_size"):
            if getattr(cfg, name) < 1:
                raise GGLMUserError(f"--{name.replace('_', '-')} must be >= 1")
        if cfg.gglm_warmup_updates < 0:
            raise GGLMUserError("--gglm-warmup-updates must be >= 0")
        self.running_score = str(cfg.gglm_score) == "running"
        if self.running_score and (
            str(cfg.gglm_granularity) != "sentence" or str(cfg.gglm_similarity) != "dot"
        ):
            raise GGLMUserError(
                "--gglm-score running needs --gglm-granularity sentence and --gglm-similarity dot"
            )
        self.mask_rule = mask_rule(cfg)
        self.cfg = cfg
        self.engine_name = str(cfg.gglm_engine)
        if self.engine_name != "auto":
            get_engine(self.engine_name)  # fail at start-up on a bad name
        self.refused_engines = refused_engines(cfg)
        if self.engine_name in self.refused_engines:
            raise GGLMUserError(
                f"--gglm-engine {self.engine_name} cannot run under --ddp-backend "
                f"{cfg.ddp_backend} with --find-unused-parameters (torch DDP's output hook "
                "breaks it): use --ddp-backend legacy_ddp, drop --find-unused-parameters, or "
                "use --gglm-engine loop"
            )
        self.granularity = str(cfg.gglm_granularity)
        self.similarity = str(cfg.gglm_similarity)
        self.needs_norms = self.similarity == "cosine" and cfg.gglm_threshold != 0.0
        if self.needs_norms and self.engine_name == "jvp":
            raise GGLMUserError(
                "--gglm-similarity cosine with a non-zero --gglm-threshold needs gradient "
                "norms, which the jvp engine does not compute: use --gglm-engine vmap or loop"
            )
        estimator = getattr(task, "estimator", None)
        if estimator is not None and estimator.settings.parameters and self.needs_norms:
            raise GGLMUserError(
                "--gglm-parameters with --gglm-similarity cosine and a non-zero threshold "
                "is not supported: the per-example gradient norms span all parameters"
            )
        self._engine: Optional[str] = None  # resolved by engine_for

    # --- schedule, asked by the task -------------------------------------------------
    def masks_update(self, update_num: int) -> bool:
        """Whether update ``update_num`` is trained on the masked loss."""
        after_warmup = update_num - self.cfg.gglm_warmup_updates
        return after_warmup >= 0 and after_warmup % self.cfg.gglm_interval == 0

    # --- losses -----------------------------------------------------------------------
    def token_losses(
        self, model: nn.Module, sample: Dict[str, Any]
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Per-token label-smoothed losses (B, T) and detached extras for logging: the
        per-token NLL (B, T) and, with --report-accuracy, the correct/total counts."""
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, nll_loss = label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=False
        )
        rows = sample["target"].size(0)
        extras = {"nll": nll_loss.detach().view(rows, -1)}
        if self.report_accuracy:
            keep = target.ne(self.padding_idx)
            predicted = lprobs.detach().argmax(1)
            extras["n_correct"] = predicted.masked_select(keep).eq(target.masked_select(keep)).sum()
            extras["total"] = keep.sum()
        return loss.view(rows, -1), extras

    def _target_mask(self, sample: Dict[str, Any]) -> Tensor:
        target = sample["target"][:, self.ignore_prefix_size :]
        return target.ne(self.padding_idx)

    def engine_for(self, model: nn.Module) -> str:
        """The engine this run uses, resolved on the first training forward: ``auto`` takes
        the fastest exact one that can run; an explicit ``ghost`` that cannot is an error."""
        if self._engine is None:
            name = self.engine_name
            if name == "auto" and self.needs_norms:
                name = "vmap"
            elif name == "auto":
                name = "jvp" if self.granularity == "token" else "ghost"
            if name == "ghost":
                problem = ghost_problem(model)
                if problem is not None and self.engine_name == "ghost":
                    raise GhostUnsupportedError(problem)
                if problem is not None:
                    logger.warning("gglm: %s; using the jvp engine", problem)
                    name = "jvp"
            if name in self.refused_engines:  # auto only: an explicit one fails in __init__
                logger.warning(
                    "gglm: the %s engine cannot run under --ddp-backend %s with "
                    "--find-unused-parameters; using the loop engine (slow: with --ddp-backend "
                    "legacy_ddp auto chooses ghost)", name, self.cfg.ddp_backend,
                )  # fmt: skip
                name = "loop"
            self._engine = name
        return self._engine

    def _aligned_loss(
        self, model: nn.Module, sample: Dict[str, Any], direction: List[Tensor], loss_scale: float
    ) -> AlignedLoss:
        name = self.engine_for(model)
        kwargs: Dict[str, Any] = dict(granularity=self.granularity, with_norms=self.needs_norms)
        if name == "vmap":
            kwargs["chunk_size"] = self.cfg.gglm_vmap_chunk_size
        if name == "ghost":
            kwargs["loss_scale"] = loss_scale
        try:
            if not self.cfg.gglm_alignment_without_dropout:
                return get_engine(name)(model, self.token_losses, sample, direction, **kwargs)
            was_training = model.training
            model.eval()
            try:
                alignment = get_engine(name)(model, self.token_losses, sample, direction, **kwargs)
            finally:
                model.train(was_training)
            losses, extras = self.token_losses(model, sample)
            return AlignedLoss(losses, alignment.alignment, alignment.gradient_norm, extras)
        except GhostUnsupportedError as error:  # a use of a parameter that no rule covers
            if self.engine_name != "auto":
                raise
            logger.warning("gglm: %s; using the jvp engine", error)
            self._engine = "jvp"
            return self._aligned_loss(model, sample, direction, loss_scale)
        except (NotImplementedError, RuntimeError) as error:
            if self.engine_name != "auto" or name != "jvp" or "forward" not in str(error).lower():
                raise
            logger.warning(
                "gglm: forward-mode AD failed on this model (%s); using the vmap engine", error
            )
            self._engine = "vmap"
            return self._aligned_loss(model, sample, direction, loss_scale)

    def unit_mask(
        self, scores: Tensor, sample: Dict[str, Any], record: Optional[ExampleRecord] = None
    ) -> Tensor:
        """The weights of the sentences' (B,) or tokens' (B, T) losses, from their scores:
        1 to train on, 0 to mask, or soft weights; a subclass may decide otherwise (the
        experiments' oracle and random controls). ``record``: the examples' past
        alignments, for --gglm-score running."""
        if self.running_score and record is not None:
            scores = record.running_alignment(sample["id"], scores)
        token_counts = self._target_mask(sample).sum(dim=1)
        return unit_weights(scores, token_counts, self.mask_rule)

    def forward(self, model: nn.Module, sample: Dict[str, Any], reduce: bool = True):
        """The unmasked loss (validation, and training where the task gives no direction)."""
        if model.training and not hasattr(self.task, "estimator"):
            # fairseq's own train_step would train unmasked without a word: refuse instead.
            # (Scripts may use the criterion's losses with any task.)
            raise GGLMUserError(
                "--criterion gradient_masked_cross_entropy needs --task "
                "translation_with_clean_set (the clean set gives the direction it masks by)"
            )
        loss, sample_size, logging_output, _ = self.masked_forward(model, sample, None)
        return loss, sample_size, logging_output

    def masked_forward(
        self,
        model: nn.Module,
        sample: Dict[str, Any],
        clean: Optional[CleanGradient],
        loss_scale: float = 1.0,
        record: Optional[ExampleRecord] = None,
    ) -> Tuple[Tensor, Any, Dict[str, Any], Optional[Decisions]]:
        """The loss masked by alignment with ``clean`` (None: unmasked), its sample size, the
        logging output and the per-sentence decisions (None when unmasked). ``loss_scale``:
        the factor fairseq's backward multiplies the loss by (fp16)."""
        if model.training:
            self.engine_for(model)  # at start-up, not after the warm-up
        direction = clean.direction if clean is not None else None
        if direction is not None and self._engine == "ghost":
            sample = _with_distinct_lengths(sample, self.padding_idx)
        target_mask = self._target_mask(sample)
        ntokens = sample["ntokens"]
        nsentences = sample["target"].size(0)
        if direction is None:
            token_losses, extras = self.token_losses(model, sample)
            weights = target_mask.to(token_losses.dtype)
            alignment = None
        else:
            aligned = self._aligned_loss(model, sample, direction, loss_scale)
            token_losses, extras = aligned.token_losses, aligned.extras
            scores = similarity(
                aligned.alignment, self.similarity, aligned.gradient_norm, direction
            )
            # A non-finite alignment says nothing about the example: mask it, record nothing.
            finite = torch.isfinite(scores)
            scores = torch.where(finite, scores, torch.zeros_like(scores))
            unit_loss_weights = self.unit_mask(scores, sample, record) * finite
            unit_loss_weights = unit_loss_weights.to(token_losses.dtype)
            sentence_level = self.granularity == "sentence"
            weights = unit_loss_weights.unsqueeze(1) if sentence_level else unit_loss_weights
            weights = weights.expand_as(token_losses) * target_mask
            alignment = aligned.alignment
            masked_loss = aligned.masked_loss(unit_loss_weights if sentence_level else weights)
        # (B, T) loss weights, zero at padding: the 0/1 mask, or soft weights. Sample size
        # counts weighted units (the kept ones for a 0/1 mask); logs and the record count a
        # unit of weight 0 as masked, so the mask rate means the same for both weightings.
        kept = weights > 0
        kept_tokens = weights.sum()
        kept_sentences = weights.amax(dim=1).sum()
        if direction is None:
            masked_loss = (token_losses * weights).sum()
        if self.sentence_avg:
            full_size, kept_size = nsentences, kept_sentences
        else:
            full_size, kept_size = ntokens, kept_tokens
        sample_size = full_size
        if direction is not None and not self.cfg.gglm_no_renormalize:
            sample_size = utils.item(kept_size)

        logging_output = {
            "loss": token_losses.detach().sum().data,
            "nll_loss": extras["nll"].sum().data,
            "masked_loss": masked_loss.detach().data,
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
            "gglm_batches": 1,
            "gglm_active": 0,
            "gglm_clean_nonfinite": int(clean is not None and direction is None),
            "gglm_sentences": 0,
            "gglm_sentences_masked": 0,
            "gglm_tokens": 0,
            "gglm_tokens_masked": 0,
            "gglm_clean_loss": 0.0,
            "gglm_alignment_sum": 0.0,
            "gglm_alignment_count": 0,
            "gglm_alignment_min": 0.0,
            "gglm_alignment_max": 0.0,
            "gglm_alignment_nonfinite": 0,
        }
        decisions = None
        if alignment is not None:
            sentence_alignment = alignment if alignment.dim() == 1 else alignment.sum(dim=1)
            token_counts = target_mask.sum(dim=1)
            masked_fraction = 1.0 - (kept.sum(dim=1) / token_counts.clamp_min(1))
            values = alignment if alignment.dim() == 1 else alignment[target_mask]
            finite_values = torch.isfinite(values)
            nonfinite = utils.item((~finite_values).sum())
            values = values[finite_values]
            # The tokens the loss sees: ntokens also counts the --ignore-prefix-size ones.
            seen_tokens = utils.item(token_counts.sum())
            logging_output.update(
                gglm_active=1,
                gglm_sentences=nsentences,
                gglm_sentences_masked=utils.item((~kept.any(dim=1)).sum()),
                gglm_tokens=seen_tokens,
                gglm_tokens_masked=seen_tokens - utils.item(kept.sum()),
                gglm_clean_loss=clean.loss,
                gglm_alignment_sum=utils.item(values.sum()),
                gglm_alignment_count=values.numel(),
                gglm_alignment_min=utils.item(values.min()) if values.numel() else 0.0,
                gglm_alignment_max=utils.item(values.max()) if values.numel() else 0.0,
                gglm_alignment_nonfinite=nonfinite,
            )
            recorded = torch.isfinite(sentence_alignment)
            decisions = Decisions(
                ids=sample["id"].detach()[recorded].cpu(),
                alignment=sentence_alignment[recorded].cpu(),
                masked=masked_fraction[recorded].cpu(),
            )
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(extras["n_correct"])
            logging_output["total"] = utils.item(extras["total"])
        return masked_loss, sample_size, logging_output, decisions

    # --- metrics ----------------------------------------------------------------------
    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        ntokens = total("ntokens")
        sample_size = total("sample_size")
        # loss and nll_loss are the unmasked losses per token, comparable with plain
        # label_smoothed_cross_entropy; masked_loss is what the update was trained on.
        metrics.log_scalar("loss", total("loss") / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_scalar(
            "nll_loss", total("nll_loss") / max(ntokens, 1) / math.log(2), ntokens, round=3
        )
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_scalar(
            "masked_loss",
            total("masked_loss") / max(sample_size, 1) / math.log(2),
            sample_size,
            round=3,
        )
        for key in ("gglm_clean_nonfinite", "gglm_alignment_nonfinite"):
            if total(key):
                metrics.log_scalar(key, total(key), round=0)
        active = total("gglm_active")
        # Fraction of micro-batches trained on the masked loss (warm-up, interval, non-finite).
        metrics.log_scalar("gglm_active", active / max(total("gglm_batches"), 1), round=3)
        sentences = total("gglm_sentences")
        tokens = total("gglm_tokens")
        if sentences > 0:
            metrics.log_scalar(
                "gglm_masked_sent", total("gglm_sentences_masked") / sentences, sentences, round=3
            )
            metrics.log_scalar(
                "gglm_masked_tok", total("gglm_tokens_masked") / tokens, tokens, round=3
            )
            metrics.log_scalar(
                "gglm_clean_loss", total("gglm_clean_loss") / active / math.log(2), active, round=3
            )
            count = total("gglm_alignment_count")
            if count > 0:
                metrics.log_scalar(
                    "gglm_align_mean", total("gglm_alignment_sum") / count, count, round=4
                )
                # Summable across micro-batches and ranks: the mean of each batch's extreme.
                metrics.log_scalar(
                    "gglm_align_min", total("gglm_alignment_min") / active, active, round=4
                )
                metrics.log_scalar(
                    "gglm_align_max", total("gglm_alignment_max") / active, active, round=4
                )
        for key in ("n_correct", "total"):
            value = total(key)
            if value:
                metrics.log_scalar(key, value)
        if total("total") > 0:
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # Every micro-batch and rank emits the same numeric keys; fairseq sums them.
        return True
