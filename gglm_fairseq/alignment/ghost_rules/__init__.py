"""Layer rules of the ``ghost`` engine, one module per layer, tied together by a registry
(in the style of Opacus' ``grad_sample/``).

A rule stands in for one torch function (``F.linear``, ``F.embedding``, ``F.layer_norm``) when
it is called with a tracked parameter. It runs the op with the parameters detached, so that
autograd computes activation gradients only, and records a :class:`Use`: what it needs of the
input (x, the normalised x, the token ids) and, after each backward pass, the output gradient
delta. From a use it then gives, with shapes stated over the op's *leading* dims L (the
positions: (T, B) or (B, T) in fairseq):

- ``alignment(use, direction) -> L``: each position's term of <grad l, G> for the direction G
  of the use's parameters (per role: ``weight``, ``bias``);
- ``gradients(use, weight) -> {role: grad}``: the parameter gradients of sum_pos weight * the
  loss behind delta, i.e. the plain weight-gradient reductions with per-position weights
  (``weight`` of shape L or None for 1).
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import Tensor

from .base import GhostUnsupportedError, Rule, Use
from .embedding import EMBEDDING
from .layer_norm import LAYER_NORM
from .linear import LINEAR

RULES: Dict[Callable[..., Tensor], Rule] = {
    rule.function: rule for rule in (LINEAR, EMBEDDING, LAYER_NORM)
}

__all__ = ["RULES", "GhostUnsupportedError", "Rule", "Use"]
