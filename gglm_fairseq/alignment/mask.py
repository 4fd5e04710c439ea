"""From alignments to a 0/1 mask."""

from __future__ import annotations

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


def mask_from_scores(scores: Tensor, threshold: float = 0.0) -> Tensor:
    """1 where the score is strictly above the threshold, else 0 (same shape, float)."""
    return (scores > threshold).to(scores.dtype)
