"""Shared pieces of the alignment engines: parameters, substitution, the engine contract.

Shapes: B examples, T target positions. A *token loss function* maps (model, batch) to a
pair: a (B, T) tensor of per-token losses, zero at padding (an example's loss l_i is its row
sum), and any detached extras the caller wants back from the training forward (fairseq's
glue passes the NLL for logging).
A *direction* is one tensor per trainable parameter (the clean gradient g_c), in the order
of :func:`trainable_parameters`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn

TokenLossFn = Callable[[nn.Module, Any], Tuple[Tensor, Any]]
GRANULARITIES = ("sentence", "token")


class AlignedLoss(NamedTuple):
    """What every engine returns.

    token_losses: (B, T), differentiable w.r.t. the model's parameters (the loss to mask).
    alignment:    (B,) for sentence granularity, (B, T) for token; float32, detached.
    gradient_norm: ||grad l|| with the same shape as ``alignment``, or None if not asked for.
    extras:       the token loss function's extras from the forward that gave token_losses.
    masked:       an engine that owns the backward (ghost) gives the masked loss this way;
                  its token_losses are then detached.
    """

    token_losses: Tensor
    alignment: Tensor
    gradient_norm: Tensor | None = None
    extras: Any = None
    masked: Callable[[Tensor], Tensor] | None = None

    def masked_loss(self, mask: Tensor) -> Tensor:
        """sum over units of mask * loss, with a backward that reaches the parameters;
        ``mask`` has the shape of ``alignment``."""
        if self.masked is not None:
            return self.masked(mask)
        losses = self.token_losses if mask.dim() == 2 else self.token_losses.sum(dim=1)
        return (losses * mask).sum()


Engine = Callable[..., AlignedLoss]


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Distinct parameters that require grad; a tied parameter appears once."""
    return [p for p in model.parameters() if p.requires_grad]


def trainable_parameter_names(model: nn.Module) -> List[str]:
    """The names of :func:`trainable_parameters`, in the same order (a tied parameter under
    the first name it is registered with)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def selected_parameters(model: nn.Module, pattern: str) -> List[bool]:
    """For each trainable parameter, whether its name matches the regular expression
    ``pattern`` (``re.search``); a clear error when none does."""
    names = trainable_parameter_names(model)
    selected = [re.search(pattern, name) is not None for name in names]
    if not any(selected):
        raise ValueError(
            f"{pattern!r} matches no trainable parameter; names look like {names[:3]}"
        )
    return selected


def restricted(direction: Sequence[Tensor], selected: Sequence[bool]) -> List[Tensor]:
    """The direction with zeros outside the selected parameters: alignments against it are
    the alignments of those parameters alone (the inner product is a sum over parameters)."""
    return [d if keep else torch.zeros_like(d) for d, keep in zip(direction, selected)]


@contextlib.contextmanager
def substituted_parameters(
    model: nn.Module, params: Sequence[nn.Parameter], values: Sequence[Tensor]
) -> Iterator[None]:
    """Let every module that holds one of ``params`` see the matching value instead.

    Unlike ``torch.func.functional_call`` this keeps ties: a parameter registered in several
    modules (shared embeddings, tied output projection) is replaced by the same value in all
    of them, and the original ``Parameter`` objects are put back afterwards.
    """
    if len(params) != len(values):
        raise ValueError(f"{len(params)} parameters but {len(values)} values")
    value_of = {id(p): v for p, v in zip(params, values)}
    swapped = []
    try:
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None and id(param) in value_of:
                    swapped.append((module, name, param))
        for module, name, param in swapped:
            module._parameters[name] = value_of[id(param)]
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def gradient(loss: Tensor, params: Sequence[nn.Parameter]) -> List[Tensor]:
    """d loss / d params without touching ``.grad``; unused parameters get zeros."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def inner_product(grads: Sequence[Tensor | None], direction: Sequence[Tensor]) -> Tensor:
    """sum_k <grads[k], direction[k]> in float32; None entries count as zero."""
    total = torch.zeros((), dtype=torch.float32, device=direction[0].device)
    for g, d in zip(grads, direction):
        if g is not None:
            total = total + (g.float() * d.float()).sum()
    return total


def squared_norm(grads: Sequence[Tensor | None]) -> Tensor:
    """sum_k ||grads[k]||^2 in float32; None entries count as zero."""
    present = [g.float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(present).sum() if present else torch.zeros(())


def refuse_gradient_norms(engine: str) -> None:
    """The error of an engine that computes alignments without per-example gradients."""
    raise ValueError(
        f"the {engine} engine gives no per-example gradient norms: use the vmap or loop "
        "engine for cosine similarity with a non-zero threshold"
    )


def checked_parameters(
    model: nn.Module, direction: Sequence[Tensor], granularity: str
) -> List[nn.Parameter]:
    """The model's trainable parameters, after checking the engine's other arguments."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    params = trainable_parameters(model)
    if len(params) != len(direction) or any(
        p.shape != d.shape for p, d in zip(params, direction)
    ):
        raise ValueError(
            "direction must have one tensor per trainable parameter, with the same shapes"
        )
    return params


def units(token_losses: Tensor, granularity: str) -> Tensor:
    """The losses that get a mask each: (B,) example losses or the (B, T) token losses."""
    return token_losses.sum(dim=1) if granularity == "sentence" else token_losses
