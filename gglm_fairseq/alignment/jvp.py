"""Forward-mode engine: a_i is the directional derivative of l_i along the clean gradient.

The parameters become dual tensors (primal theta, tangent g_c) for one forward pass. The
tangent of the per-token loss tensor is <grad l_{i,t}, g_c> for every token at once; the
primal keeps its autograd graph, so the masked backward follows without a second forward.
No per-example gradient is ever built. Gradient norms are not available this way.
"""

from __future__ import annotations

import math
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
    scale = tangent_scale(direction)
    # Flash and memory-efficient attention kernels have no forward-AD formula.
    with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
        duals = [fwAD.make_dual(p, (d * scale).to(p.dtype)) for p, d in zip(params, direction)]
        with substituted_parameters(model, params, duals):
            dual_losses, extras = token_loss(model, batch)
        token_losses, tangent = fwAD.unpack_dual(dual_losses)
        if tangent is None:  # the loss does not depend on the parameters at all
            tangent = torch.zeros_like(token_losses)
        alignment = units(tangent.detach().float(), granularity) / scale
    return AlignedLoss(token_losses, alignment, None, extras)


def tangent_scale(direction: Sequence[Tensor]) -> float:
    """The power of two that brings the direction's largest magnitude into [1, 2).

    The tangent is cast to the parameters' dtype: a clean gradient of a mean loss over
    thousands of tokens has many entries below fp16's smallest subnormal (6e-8), which the
    cast would flush to zero. Scaled, entries down to 2^-24 of the largest survive in fp16,
    while the largest is about as big as a typical unscaled clean gradient's, so the
    tangents have the same headroom as before. Multiplying by a power of two and dividing
    the fp32 result by it again is exact in binary floating point.
    """
    magnitudes = [d.detach().abs().max().float() for d in direction if d.numel()]
    largest = float(torch.stack(magnitudes).max()) if magnitudes else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return 1.0
    _, exponent = math.frexp(largest)  # largest = m * 2**exponent, 0.5 <= m < 1
    # 2^127 is fp32's largest power of two: a larger scale would itself be infinite.
    return math.ldexp(1.0, min(1 - exponent, 127))
