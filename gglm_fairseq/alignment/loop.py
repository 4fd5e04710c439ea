"""Reference engine: one backward per example (or per token) through a shared forward.

Exact and simple, B (or B*T) times the cost of a backward: for tests and tiny models.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .core import (
    AlignedLoss,
    TokenLossFn,
    checked_parameters,
    inner_product,
    squared_norm,
    units,
)


def loop_aligned_loss(
    model: nn.Module,
    token_loss: TokenLossFn,
    batch: Any,
    direction: Sequence[Tensor],
    granularity: str = "sentence",
    with_norms: bool = False,
) -> AlignedLoss:
    params = checked_parameters(model, direction, granularity)
    token_losses, extras = token_loss(model, batch)
    unit_losses = units(token_losses, granularity)
    flat = unit_losses.reshape(-1)
    alignment = torch.zeros(flat.numel(), dtype=torch.float32, device=flat.device)
    norms = torch.zeros_like(alignment) if with_norms else None
    for k in range(flat.numel()):
        grads = torch.autograd.grad(flat[k], params, retain_graph=True, allow_unused=True)
        alignment[k] = inner_product(grads, direction)
        if norms is not None:
            norms[k] = squared_norm(grads).sqrt()
    shape = unit_losses.shape
    return AlignedLoss(
        token_losses,
        alignment.view(shape),
        None if norms is None else norms.view(shape),
        extras,
    )
