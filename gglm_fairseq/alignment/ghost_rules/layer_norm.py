"""Rule for ``F.layer_norm`` (``nn.LayerNorm``): y_t = gamma * xhat_t + beta.

Per example: <grad_gamma l, G_gamma> = sum_t <delta_t * xhat_t, G_gamma> and
<grad_beta l, G_beta> = sum_t <delta_t, G_beta>. The forward keeps the mean and 1/std of the
native kernel, and the input gradient is the native backward's.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Use, argument, flat, row_weights


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, use, x, shape, weight, bias, eps):
        if torch.is_autocast_enabled(x.device.type):  # autocast runs layer_norm in fp32
            x = x.float()
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.use, ctx.shape = use, shape
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, delta):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        ctx.use.saved = ((x.detach().float() - mean) * rstd).to(x.dtype)  # xhat
        ctx.use.delta = delta
        dx = None
        if ctx.needs_input_grad[2]:
            dx, _, _ = torch.ops.aten.native_layer_norm_backward(
                delta.to(x.dtype), x, ctx.shape, mean, rstd, weight, bias, [True, False, False]
            )
        return None, None, dx, None, None, None, None


class LayerNormRule:
    function = staticmethod(F.layer_norm)
    modules = (nn.LayerNorm,)
    roles = ("weight", "bias")

    def parameters(self, args: tuple, kwargs: dict) -> Dict[str, Optional[Tensor]]:
        return {
            "weight": argument(args, kwargs, 2, "weight"),
            "bias": argument(args, kwargs, 3, "bias"),
        }

    def leading(self, args: tuple, kwargs: dict) -> tuple:
        x = argument(args, kwargs, 0, "input")
        shape = argument(args, kwargs, 1, "normalized_shape")
        return tuple(x.shape[: x.dim() - len(shape)])

    def run(self, use: Use, anchor: Tensor, args: tuple, kwargs: dict) -> Tensor:
        x = argument(args, kwargs, 0, "input")
        shape = list(argument(args, kwargs, 1, "normalized_shape"))
        p = self.parameters(args, kwargs)
        weight, bias = (None if t is None else t.detach() for t in (p["weight"], p["bias"]))
        eps = argument(args, kwargs, 4, "eps", 1e-5)
        return _LayerNorm.apply(anchor, use, x, shape, weight, bias, eps)

    def alignment(self, use: Use, direction: Dict[str, Tensor]) -> Tensor:
        delta = flat(use.delta, use.leading).float()
        terms = torch.zeros(delta.shape[0], device=delta.device)
        if "weight" in direction:
            xhat = flat(use.saved, use.leading).float()
            terms += (delta * xhat).matmul(direction["weight"].reshape(-1))
        if "bias" in direction:
            terms += delta.matmul(direction["bias"].reshape(-1))
        return terms.view(use.leading)

    def gradients(self, use: Use, weight: Optional[Tensor]) -> Dict[str, Tensor]:
        delta = flat(use.delta, use.leading)
        w = row_weights(weight, use.leading, delta)
        if w is not None:
            delta = delta * w
        shape = use.delta.shape[len(use.leading):]
        grads = {}
        if "weight" in use.parameters:
            xhat = flat(use.saved, use.leading).to(delta.dtype)
            grads["weight"] = (delta * xhat).sum(0).view(shape)
        if "bias" in use.parameters:
            grads["bias"] = delta.sum(0).view(shape)
        return grads


LAYER_NORM = LayerNormRule()
