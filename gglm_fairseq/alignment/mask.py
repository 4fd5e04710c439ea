"""From alignments to the weights of the loss: a 0/1 mask or soft weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

SIMILARITIES = ("dot", "cosine")


def similarity(
    alignment: Tensor,
    similarity: str,
    gradient_norm: Tensor | None = None,
    direction: Sequence[Tensor] | None = None,
) -> Tensor:
    """The score that is thresholded: the alignment itself, or its cosine.

    cosine = a / (||grad l|| * ||g_c||); a zero gradient gives cosine 0.
    """
    if similarity == "dot":
        return alignment
    if similarity != "cosine":
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if gradient_norm is None or direction is None:
        raise ValueError("cosine similarity needs the gradient norms and the direction")
    direction_norm = torch.sqrt(sum(d.float().pow(2).sum() for d in direction))
    denominator = gradient_norm.float() * direction_norm
    return torch.where(denominator > 0, alignment / denominator.clamp_min(1e-30), 0.0)


def mask_from_scores(scores: Tensor, threshold: Tensor | float = 0.0) -> Tensor:
    """1 where the score is strictly above the threshold, else 0 (same shape, float)."""
    return (scores > threshold).to(scores.dtype)


THRESHOLD_MODES = ("absolute", "batch-mean", "batch-quantile")
WEIGHTINGS = ("mask", "soft")


def batch_cut(scores: Tensor, threshold: float, mode: str) -> Tensor:
    """The score an example must exceed in this micro-batch: the threshold itself
    (absolute) or the mean of the batch's scores (B,) plus the threshold (batch-mean)."""
    if mode == "absolute":
        return scores.new_tensor(threshold)
    if mode == "batch-mean":
        return scores.mean() + threshold
    raise ValueError(f"no single cut for threshold mode {mode!r}")


def mask_lowest_share(scores: Tensor, share: float) -> Tensor:
    """(B,) 0/1: 0 for the floor(share * B) lowest scores (ties: the earlier row first),
    1 for the rest."""
    masked = math.floor(share * scores.numel())
    order = torch.sort(scores, stable=True).indices
    keep = torch.ones_like(scores)
    keep[order[:masked]] = 0.0
    return keep


def soft_weights(scores: Tensor, cut: Tensor | float) -> Tensor:
    """(B,) L2RW-style weights max(s_i - cut, 0) / mean_j max(s_j - cut, 0): mean 1 over
    the batch, so the loss keeps its scale; all zero when no score exceeds the cut. A weight
    is 0 exactly where the 0/1 mask at the same cut is 0."""
    excess = (scores - cut).clamp_min(0.0)
    mean = excess.mean()
    # torch.where, not an if: no device-to-host sync.
    return torch.where(mean > 0, excess / mean.clamp_min(torch.finfo(mean.dtype).tiny), 0.0)


def keep_top_tokens(
    scores: Tensor, token_counts: Tensor, eligible: Tensor, budget: int
) -> Tensor:
    """(B,) 0/1: the eligible sentences in descending score order (ties: the earlier row
    first), as long as their target tokens ``token_counts`` (B,) add up to at most
    ``budget``; the first that does not fit ends the selection (every kept sentence scores
    at least as high as every eligible one left out)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    counts = torch.where(eligible > 0, token_counts, 0)[order]
    fits = counts.cumsum(0) <= budget
    keep = torch.zeros_like(scores)
    keep[order] = (fits & (eligible[order] > 0)).to(scores.dtype)
    return keep


@dataclass(frozen=True)
class MaskRule:
    """How a micro-batch's sentence scores become weights (the criterion checks the
    combination against the command line)."""

    threshold: float = 0.0
    threshold_mode: str = "absolute"  # one of THRESHOLD_MODES
    quantile: float = 0.4  # share masked by batch-quantile
    weighting: str = "mask"  # one of WEIGHTINGS; soft needs a cut (not batch-quantile)
    keep_tokens: int = 0  # 0: no token budget


def unit_weights(scores: Tensor, token_counts: Tensor, rule: MaskRule) -> Tensor:
    """(B,) weights of the sentences' losses from their scores (B,) and target token counts
    (B,): 0/1 (mask) or soft weights."""
    if rule.threshold_mode == "batch-quantile":
        keep = mask_lowest_share(scores, rule.quantile)
    else:
        cut = batch_cut(scores, rule.threshold, rule.threshold_mode)
        if rule.weighting == "soft":
            return soft_weights(scores, cut)
        keep = mask_from_scores(scores, cut)
    if rule.keep_tokens:
        keep = keep_top_tokens(scores, token_counts, keep, rule.keep_tokens)
    return keep
