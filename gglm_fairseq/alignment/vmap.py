"""Per-sample gradients with ``torch.func``: ``vmap(grad(...))`` over one-hot selectors.

fairseq's transformer branches on its data (``if padding_mask.any()``), which ``vmap`` over
the batch cannot trace. So the batch stays whole and ``vmap`` runs over selectors s instead:
grad_theta <s, l(theta)> with s = e_i is grad l_i. The forward is shared by a chunk of
selectors and only the backward is vectorised, so memory grows with the chunk size times
the parameter count, not with the batch.

Dropout: the alignment pass replays the random state of the training forward that comes
first, so the mask judges the same dropout noise as the loss it masks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.onnx.operators
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .core import (
    AlignedLoss,
    TokenLossFn,
    checked_parameters,
    inner_product,
    squared_norm,
    substituted_parameters,
    units,
)


class _RandomState:
    """The CPU and CUDA generator states at construction, to replay them."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def _shape_as_tensor_for_functorch() -> Iterator[None]:
    """fairseq's sinusoidal positions call ``torch.onnx.operators.shape_as_tensor``, which
    has no functorch rule; an equivalent made of plain shapes stands in during the pass."""
    original = torch.onnx.operators.shape_as_tensor
    torch.onnx.operators.shape_as_tensor = lambda x: torch.tensor(x.shape, device=x.device)
    try:
        yield
    finally:
        torch.onnx.operators.shape_as_tensor = original


def vmap_aligned_loss(
    model: nn.Module,
    token_loss: TokenLossFn,
    batch: Any,
    direction: Sequence[Tensor],
    granularity: str = "sentence",
    with_norms: bool = False,
    chunk_size: int = 16,
) -> AlignedLoss:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    params = checked_parameters(model, direction, granularity)
    random_state = _RandomState()

    def unit_losses(values: Sequence[Tensor]) -> Tensor:
        random_state.restore()
        with substituted_parameters(model, params, values):
            return units(token_loss(model, batch)[0], granularity).reshape(-1)

    def selected_loss(values: Sequence[Tensor], selector: Tensor) -> Tensor:
        return (unit_losses(values) * selector).sum()

    def alignment_and_norm(values: Sequence[Tensor], selector: Tensor):
        grads = torch.func.grad(selected_loss)(values, selector)
        return inner_product(grads, direction), squared_norm(grads)

    # The math attention kernel has batching rules for its backward; the fused ones do not.
    # Both passes use it so that attention dropout draws the same numbers in each.
    with sdpa_kernel(SDPBackend.MATH):
        token_losses, extras = token_loss(model, batch)
    shape = units(token_losses, granularity).shape
    selectors = torch.eye(shape.numel(), dtype=token_losses.dtype, device=token_losses.device)
    with _shape_as_tensor_for_functorch(), sdpa_kernel(SDPBackend.MATH):
        alignment, squared = torch.func.vmap(
            alignment_and_norm, in_dims=(None, 0), chunk_size=chunk_size, randomness="same"
        )([p.detach() for p in params], selectors)
    return AlignedLoss(
        token_losses,
        alignment.detach().view(shape),
        squared.detach().sqrt().view(shape) if with_norms else None,
        extras,
    )
