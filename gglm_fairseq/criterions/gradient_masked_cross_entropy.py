"""Label-smoothed cross-entropy masked by gradient alignment with a clean batch (GGLM).

The task (``translation_with_clean_set``) hands this criterion the clean gradient of the
update through :meth:`begin_step`; the alignment math lives in :mod:`gglm_fairseq.alignment`.
"""


import logging
import math
import re
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
from gglm_fairseq.errors import GGLMUserError

logger = logging.getLogger(__name__)

ENGINE_CHOICES = ChoiceEnum(["auto", "ghost", "jvp", "vmap", "loop"])


@dataclass
class CleanGradient:
    """The clean-batch gradient of one update, as the task hands it over."""

    direction: Optional[List[Tensor]]  # one tensor per trainable parameter; None if non-finite
    loss: float  # the clean batch's mean per-token loss (nats)
    update_num: int  # the update at which it was computed


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
    gglm_preconditioner: ChoiceEnum(["none", "adam"]) = field(
        default="none",
        metadata={
            "help": "measure alignments in the optimiser's geometry: adam = <grad l_i, P "
            "g_clean> with P = 1/(sqrt(v_hat)+eps) from Adam's state, the first-order "
            "change of the clean loss under the Adam step (ours; the raw gradient until "
            "Adam's first step); none = the raw <grad l_i, g_clean>"
        },
    )
    gglm_parameters: str = field(
        default="",
        metadata={
            "help": "measure alignments over the parameters whose names match this regular "
            "expression only (the clean gradient is zero elsewhere), e.g. 'encoder_attn' for "
            "the decoder's cross-attention (ours); empty: all parameters"
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
    gglm_clean_grad_interval: int = field(
        default=1,
        metadata={"help": "recompute the clean gradient every K updates, reuse in between"},
    )
    gglm_clean_grad_ema: float = field(
        default=0.75,
        metadata={
            "help": "average the clean gradient across updates: g <- d*g_old + (1-d)*g_new "
            "with this decay d in [0, 1) (0: the current clean batch alone; ours: with the "
            "default quarter-size clean batch it is closer to the whole clean set's gradient "
            "than one full-size batch, see docs/benchmarks.md)"
        },
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
        for name in ("gglm_interval", "gglm_clean_grad_interval", "gglm_vmap_chunk_size"):
            if getattr(cfg, name) < 1:
                raise GGLMUserError(f"--{name.replace('_', '-')} must be >= 1")
        if cfg.gglm_warmup_updates < 0:
            raise GGLMUserError("--gglm-warmup-updates must be >= 0")
        if not 0.0 <= cfg.gglm_clean_grad_ema < 1.0:
            raise GGLMUserError("--gglm-clean-grad-ema must be in [0, 1)")
        self.running_score = str(cfg.gglm_score) == "running"
        if self.running_score and (
            str(cfg.gglm_granularity) != "sentence" or str(cfg.gglm_similarity) != "dot"
        ):
            raise GGLMUserError(
                "--gglm-score running needs --gglm-granularity sentence and "
                "--gglm-similarity dot"
            )
        self.mask_rule = mask_rule(cfg)
        self.cfg = cfg
        self.engine_name = str(cfg.gglm_engine)
        if self.engine_name != "auto":
            get_engine(self.engine_name)  # fail at start-up on a bad name
        self.granularity = str(cfg.gglm_granularity)
        self.similarity = str(cfg.gglm_similarity)
        self.needs_norms = self.similarity == "cosine" and cfg.gglm_threshold != 0.0
        if self.needs_norms and self.engine_name == "jvp":
            raise GGLMUserError(
                "--gglm-similarity cosine with a non-zero --gglm-threshold needs gradient "
                "norms, which the jvp engine does not compute: use --gglm-engine vmap or loop"
            )
        if cfg.gglm_parameters:
            try:
                re.compile(cfg.gglm_parameters)
            except re.error as error:
                message = f"--gglm-parameters: bad regular expression ({error})"
                raise GGLMUserError(message) from None
            if self.needs_norms:
                raise GGLMUserError(
                    "--gglm-parameters with --gglm-similarity cosine and a non-zero threshold "
                    "is not supported: the per-example gradient norms span all parameters"
                )
        self._engine: Optional[str] = None  # resolved by engine_for
        # Set by the task for each training micro-batch (None: plain training).
        self.clean: Optional[CleanGradient] = None
        self.loss_scale: float = 1.0
        self.record_examples: bool = False
        self.pending: List[Tuple[Tensor, Tensor, Tensor]] = []

    # --- schedule, asked by the task -------------------------------------------------
    def masks_update(self, update_num: int) -> bool:
        """Whether update ``update_num`` is trained on the masked loss."""
        after_warmup = update_num - self.cfg.gglm_warmup_updates
        return after_warmup >= 0 and after_warmup % self.cfg.gglm_interval == 0

    def begin_step(
        self, clean: Optional[CleanGradient], record_examples: bool, loss_scale: float = 1.0
    ) -> None:
        """Mask the coming micro-batches with ``clean`` (None: plain training); fairseq's
        backward will multiply the loss by ``loss_scale`` (fp16)."""
        self.clean = clean
        self.record_examples = record_examples
        self.loss_scale = loss_scale

    def end_step(self) -> None:
        self.clean = None

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
            self._engine = name
        return self._engine

    def _aligned_loss(self, model: nn.Module, sample: Dict[str, Any]) -> AlignedLoss:
        name = self.engine_for(model)
        kwargs: Dict[str, Any] = dict(granularity=self.granularity, with_norms=self.needs_norms)
        if name == "vmap":
            kwargs["chunk_size"] = self.cfg.gglm_vmap_chunk_size
        if name == "ghost":
            kwargs["loss_scale"] = self.loss_scale
        direction = self.clean.direction
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
            return self._aligned_loss(model, sample)
        except (NotImplementedError, RuntimeError) as error:
            if self.engine_name != "auto" or name != "jvp" or "forward" not in str(error).lower():
                raise
            logger.warning(
                "gglm: forward-mode AD failed on this model (%s); using the vmap engine", error
            )
            self._engine = "vmap"
            return self._aligned_loss(model, sample)

    def unit_mask(self, scores: Tensor, sample: Dict[str, Any]) -> Tensor:
        """The weights of the sentences' (B,) or tokens' (B, T) losses, from their scores:
        1 to train on, 0 to mask, or soft weights; a subclass may decide otherwise (the
        experiments' oracle and random controls)."""
        if self.running_score:
            scores = self.task.record.running_alignment(sample["id"], scores)
        token_counts = self._target_mask(sample).sum(dim=1)
        return unit_weights(scores, token_counts, self.mask_rule)

    def forward(self, model: nn.Module, sample: Dict[str, Any], reduce: bool = True):
        if model.training:
            self.engine_for(model)  # at start-up, not after the warm-up
        clean = self.clean if model.training else None
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
            aligned = self._aligned_loss(model, sample)
            token_losses, extras = aligned.token_losses, aligned.extras
            scores = similarity(
                aligned.alignment, self.similarity, aligned.gradient_norm, direction
            )
            unit_loss_weights = self.unit_mask(scores, sample).to(token_losses.dtype)
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
        }
        if alignment is not None:
            sentence_alignment = alignment if alignment.dim() == 1 else alignment.sum(dim=1)
            token_counts = target_mask.sum(dim=1)
            masked_fraction = 1.0 - (kept.sum(dim=1) / token_counts.clamp_min(1))
            values = alignment if alignment.dim() == 1 else alignment[target_mask]
            logging_output.update(
                gglm_active=1,
                gglm_sentences=nsentences,
                gglm_sentences_masked=utils.item((~kept.any(dim=1)).sum()),
                gglm_tokens=ntokens,
                gglm_tokens_masked=ntokens - utils.item(kept.sum()),
                gglm_clean_loss=clean.loss,
                gglm_alignment_sum=utils.item(values.sum()),
                gglm_alignment_count=values.numel(),
                gglm_alignment_min=utils.item(values.min()) if values.numel() else 0.0,
                gglm_alignment_max=utils.item(values.max()) if values.numel() else 0.0,
            )
            if self.record_examples:
                self.pending.append(
                    (sample["id"].detach().cpu(), sentence_alignment.cpu(), masked_fraction.cpu())
                )
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(extras["n_correct"])
            logging_output["total"] = utils.item(extras["total"])
        return masked_loss, sample_size, logging_output

    def take_pending(self) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """The per-example decisions since the last call, for the task's record."""
        pending, self.pending = self.pending, []
        return pending

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
            "masked_loss", total("masked_loss") / max(sample_size, 1) / math.log(2),
            sample_size, round=3,
        )
        nonfinite = total("gglm_clean_nonfinite")
        if nonfinite:
            metrics.log_scalar("gglm_clean_nonfinite", nonfinite, round=0)
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
            metrics.log_scalar("gglm_clean_loss", total("gglm_clean_loss") / active / math.log(2),
                               active, round=3)
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
