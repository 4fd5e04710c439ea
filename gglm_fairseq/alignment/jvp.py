"""Forward-mode engine: a_i is the directional derivative of l_i along the clean gradient.

The parameters become dual tensors (primal theta, tangent g_c) for one forward pass. The
tangent of the per-token loss tensor is <grad l_{i,t}, g_c> for every token at once; the
primal keeps its autograd graph, so the masked backward follows without a second forward.
No per-example gradient is ever built. Gradient norms are not available this way.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .core import (
    AlignedLoss,
    TokenLossFn,
    checked_parameters,
    refuse_gradient_norms,
    substituted_parameters,
    units,
)


def jvp_aligned_loss(
    model: nn.Module,
    token_loss: TokenLossFn,
    batch: Any,
    direction: Sequence[Tensor],
    granularity: str = "sentence",
    with_norms: bool = False,
) -> AlignedLoss:
    if with_norms:
        refuse_gradient_norms("jvp")
    params = checked_parameters(model, direction, granularity)
    # Flash and memory-efficient attention kernels have no forward-AD formula.
    with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
        duals = [fwAD.make_dual(p, d.to(p.dtype)) for p, d in zip(params, direction)]
        with substituted_parameters(model, params, duals):
            dual_losses, extras = token_loss(model, batch)
        token_losses, tangent = fwAD.unpack_dual(dual_losses)
        if tangent is None:  # the loss does not depend on the parameters at all
            tangent = torch.zeros_like(token_losses)
        alignment = units(tangent, granularity).detach().float()
    return AlignedLoss(token_losses, alignment, None, extras)
