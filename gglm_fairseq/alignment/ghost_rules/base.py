"""What every layer rule of the ghost engine shares: the record of one use, the rule
contract and two shape helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Protocol, Tuple, Type

from torch import Tensor, nn

from gglm_fairseq.errors import GGLMUserError


class GhostUnsupportedError(GGLMUserError):
    """The model uses a parameter in a way no ghost rule covers."""


@dataclass(eq=False)
class Use:
    """One call of a rule's function during the recorded forward."""

    rule: Rule
    parameters: Dict[str, Tensor]  # role -> tracked parameter (the model's own Parameter)
    leading: Tuple[int, ...]  # the op's position dims
    saved: Any = None  # what the rule keeps of the input
    delta: Optional[Tensor] = None  # output gradient of the latest backward pass
    options: Dict[str, Any] = field(default_factory=dict)


class Rule(Protocol):
    function: Callable[..., Tensor]  # the torch function it stands in for
    modules: Tuple[Type[nn.Module], ...]  # module types whose parameters it covers
    roles: Tuple[str, ...]  # their parameter names

    def parameters(self, args: tuple, kwargs: dict) -> Dict[str, Optional[Tensor]]:
        """The call's parameter arguments by role."""

    def leading(self, args: tuple, kwargs: dict) -> Tuple[int, ...]:
        """The call's position dims."""

    def run(self, use: Use, anchor: Tensor, args: tuple, kwargs: dict) -> Tensor:
        """The op's output, recorded into ``use``; differentiable w.r.t. inputs and anchor."""

    def alignment(self, use: Use, direction: Dict[str, Tensor]) -> Tensor:
        """Float32 per-position terms of <grad, direction>, shape ``use.leading``."""

    def gradients(self, use: Use, weight: Optional[Tensor]) -> Dict[str, Tensor]:
        """Per-role gradients of the weighted loss behind ``use.delta``."""


def argument(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    """A torch function's argument, given by position or by name."""
    return args[position] if len(args) > position else kwargs.get(name, default)


def flat(tensor: Tensor, leading: Tuple[int, ...]) -> Tensor:
    """(prod(leading), rest): one row per position."""
    return tensor.reshape(math.prod(leading), -1)


def row_weights(
    weight: Optional[Tensor], leading: Tuple[int, ...], like: Tensor
) -> Optional[Tensor]:
    """(prod(leading), 1) weights, one per position, in ``like``'s dtype (None stays None)."""
    if weight is None:
        return None
    return weight.expand(leading).reshape(-1, 1).to(like.dtype)
