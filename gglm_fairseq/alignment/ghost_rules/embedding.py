"""Rule for ``F.embedding`` (``nn.Embedding`` and subclasses such as fairseq's
``LearnedPositionalEmbedding``): y_t = E[w_t].

Per example: <grad_E l, G_E> = sum_t <delta_t, G_E[w_t]> over positions whose id is not
``padding_idx`` (that row gets no gradient, as in ``F.embedding``); the weight gradient adds
w_t delta_t into row w_t.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import GhostUnsupportedError, Use, argument, flat, row_weights


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, use, indices, weight, padding_idx):
        ctx.use = use
        return F.embedding(indices, weight, padding_idx)

    @staticmethod
    def backward(ctx, delta):
        ctx.use.delta = delta
        return None, None, None, None, None


class EmbeddingRule:
    function = staticmethod(F.embedding)
    modules = (nn.Embedding,)
    roles = ("weight",)

    def parameters(self, args: tuple, kwargs: dict) -> Dict[str, Optional[Tensor]]:
        return {"weight": argument(args, kwargs, 1, "weight")}

    def leading(self, args: tuple, kwargs: dict) -> tuple:
        return tuple(argument(args, kwargs, 0, "input").shape)

    def run(self, use: Use, anchor: Tensor, args: tuple, kwargs: dict) -> Tensor:
        indices = argument(args, kwargs, 0, "input")
        weight = self.parameters(args, kwargs)["weight"]
        padding_idx = argument(args, kwargs, 2, "padding_idx")
        if argument(args, kwargs, 3, "max_norm") is not None or argument(
            args, kwargs, 5, "scale_grad_by_freq", False
        ):
            raise GhostUnsupportedError(
                "the ghost engine has no rule for embeddings with max_norm or "
                "scale_grad_by_freq: use --gglm-engine jvp"
            )
        if padding_idx is not None and padding_idx < 0:
            padding_idx += weight.shape[0]
        use.saved = indices
        use.options["padding_idx"] = padding_idx
        return _Embedding.apply(anchor, use, indices, weight.detach(), padding_idx)

    def _kept(self, use: Use) -> Optional[Tensor]:
        padding_idx = use.options["padding_idx"]
        return None if padding_idx is None else use.saved.reshape(-1).ne(padding_idx)

    def alignment(self, use: Use, direction: Dict[str, Tensor]) -> Tensor:
        ids = use.saved.reshape(-1)
        delta = flat(use.delta, use.leading).float()
        terms = (delta * direction["weight"].index_select(0, ids)).sum(1)
        kept = self._kept(use)
        if kept is not None:
            terms = terms * kept
        return terms.view(use.leading)

    def gradients(self, use: Use, weight: Optional[Tensor]) -> Dict[str, Tensor]:
        table = use.parameters["weight"]
        delta = flat(use.delta, use.leading)
        w = row_weights(weight, use.leading, delta)
        if w is not None:
            delta = delta * w
        ids = use.saved.reshape(-1)
        kept = self._kept(use)
        if kept is not None:
            ids, delta = ids[kept], delta[kept]
        grad = torch.zeros(table.shape, dtype=delta.dtype, device=delta.device)
        return {"weight": grad.index_add_(0, ids, delta)}


EMBEDDING = EmbeddingRule()
