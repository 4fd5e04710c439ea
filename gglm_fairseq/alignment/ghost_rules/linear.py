"""Rule for ``F.linear`` (``nn.Linear``): y_t = W x_t + b at every position t.

Per example: <grad_W l, G_W> = sum_t delta_t^T G_W x_t (one extra GEMM, projected onto the
smaller of the two widths) and <grad_b l, g_b> = sum_t <delta_t, g_b>; the weight gradient
is the plain GEMM sum_t w_t delta_t x_t^T.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Use, argument, flat, row_weights


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, use, x, weight, bias):
        ctx.use = use
        ctx.save_for_backward(x, weight)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # out= variants are not autocast
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        # Written through out=, so the output is no view: fairseq scales q in place.
        y = x.new_empty(x.shape[:-1] + (weight.shape[0],))
        out, rows = y.view(-1, weight.shape[0]), x.reshape(-1, x.shape[-1])
        if bias is None:
            torch.mm(rows, weight.t(), out=out)
        else:
            torch.addmm(bias, rows, weight.t(), out=out)
        return y

    @staticmethod
    def backward(ctx, delta):
        x, weight = ctx.saved_tensors
        ctx.use.saved, ctx.use.delta = x.detach(), delta
        dx = None
        if ctx.needs_input_grad[2]:
            dx = delta.matmul(weight.to(delta.dtype)).to(x.dtype)
        return None, None, dx, None, None


class LinearRule:
    function = staticmethod(F.linear)
    modules = (nn.Linear,)
    roles = ("weight", "bias")

    def parameters(self, args: tuple, kwargs: dict) -> Dict[str, Optional[Tensor]]:
        return {
            "weight": argument(args, kwargs, 1, "weight"),
            "bias": argument(args, kwargs, 2, "bias"),
        }

    def leading(self, args: tuple, kwargs: dict) -> tuple:
        return tuple(argument(args, kwargs, 0, "input").shape[:-1])

    def run(self, use: Use, anchor: Tensor, args: tuple, kwargs: dict) -> Tensor:
        x = argument(args, kwargs, 0, "input")
        p = self.parameters(args, kwargs)
        bias = None if p["bias"] is None else p["bias"].detach()
        return _Linear.apply(anchor, use, x, p["weight"].detach(), bias)

    def alignment(self, use: Use, direction: Dict[str, Tensor]) -> Tensor:
        x = flat(use.saved, use.leading).float()  # (N, in)
        delta = flat(use.delta, use.leading).float()  # (N, out)
        terms = torch.zeros(x.shape[0], device=x.device)
        if "weight" in direction:
            g = direction["weight"]  # (out, in)
            if g.shape[1] <= g.shape[0]:
                terms += (delta.matmul(g) * x).sum(1)
            else:
                terms += (x.matmul(g.t()) * delta).sum(1)
        if "bias" in direction:
            terms += delta.matmul(direction["bias"])
        return terms.view(use.leading)

    def gradients(self, use: Use, weight: Optional[Tensor]) -> Dict[str, Tensor]:
        delta = flat(use.delta, use.leading)  # (N, out)
        x = flat(use.saved, use.leading).to(delta.dtype)  # (N, in)
        w = row_weights(weight, use.leading, delta)  # (N, 1)
        grads = {}
        if "weight" in use.parameters:
            # The weights go on the narrower side of the GEMM (x for the output projection).
            if w is None:
                grads["weight"] = delta.t().matmul(x)
            elif x.shape[1] < delta.shape[1]:
                grads["weight"] = delta.t().matmul(x * w)
            else:
                grads["weight"] = (delta * w).t().matmul(x)
        if "bias" in use.parameters:
            grads["bias"] = delta.sum(0) if w is None else w.t().matmul(delta).view(-1)
        return grads

LINEAR = LinearRule()
