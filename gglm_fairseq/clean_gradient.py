"""The clean-gradient estimator: the fp32 direction GGLM aligns training examples with.

One owner for everything that turns clean batches into that direction: the interval at which it
is recomputed, the average across updates, the parameter selection, the optimiser geometry, and
the state a resumed run needs to continue exactly. It knows nothing of fairseq: batches, the
per-token loss, the data-parallel all-reduce and Adam's state come in as arguments.

Exact resume: ``state_dict`` holds the average and the anchor (the update it was last taken at),
plus the direction itself where it cannot be rebuilt from them (Adam geometry with an interval
K > 1: the preconditioner of the anchor's update is gone). A run resumed anywhere, including in
the middle of an interval or from fairseq's ``crash.pt`` written during an update, gets the same
direction as an uninterrupted one and never averages the same clean batch in twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from gglm_fairseq.alignment import (
    adam_preconditioned,
    gradient,
    selected_parameters,
    trainable_parameters,
)
from gglm_fairseq.errors import GGLMUserError

logger = logging.getLogger(__name__)

TokenLossFn = Callable[[nn.Module, Any], Tuple[Tensor, Dict[str, Tensor]]]
AdamState = Tuple[List[Tensor], float, float, float]  # second moment, step, beta2, eps
# fp16 clean backward: on overflow, divide the scale by _SCALE_BACKOFF, at most this often.
_SCALE_RETRIES = 12
_SCALE_BACKOFF = 4.0


@dataclass
class CleanGradient:
    """The direction of one update."""

    direction: Optional[List[Tensor]]  # fp32, one tensor per trainable parameter; None: non-finite
    loss: float  # the clean batches' mean per-token loss (nats)
    update_num: int  # the anchor: the update it was computed at


@dataclass(frozen=True)
class EstimatorSettings:
    interval: int = 1  # recompute every K updates, reuse in between
    decay: float = 0.0  # g <- d * g_old + (1 - d) * g_new
    preconditioner: str = "none"  # "adam": P g with P = 1 / (sqrt(v_hat) + eps)
    parameters: str = ""  # regular expression: the parameters the direction spans ("": all)

    def check(self) -> None:
        if self.interval < 1:
            raise GGLMUserError("--gglm-clean-grad-interval must be >= 1")
        if not 0.0 <= self.decay < 1.0:
            raise GGLMUserError("--gglm-clean-grad-ema must be in [0, 1)")
        if self.parameters:
            try:
                re.compile(self.parameters)
            except re.error as error:
                raise GGLMUserError(
                    f"--gglm-parameters: bad regular expression ({error})"
                ) from None


def clean_batch_gradient(
    model: nn.Module,
    token_losses: TokenLossFn,
    batches: Sequence[Any],
    total_tokens: float,
    loss_scale: float = 1.0,
) -> Tuple[List[Tensor], Tensor]:
    """fp32 gradient of the clean loss summed over ``batches`` / ``total_tokens`` (one tensor per
    trainable parameter), and that loss. Dropout is off: the direction is an estimate, not a step.

    Half-precision parameters: the backward runs under ``loss_scale`` times the token count,
    as fairseq's own backward of a summed loss would (unscaled, 93% of a mean loss's logit
    gradients flush to zero in fp16), and is unscaled in fp32; on overflow the scale backs off.
    """
    params = trainable_parameters(model)
    half = any(p.dtype == torch.float16 for p in params)
    scale = loss_scale * total_tokens if half else 1.0
    was_training = model.training
    model.eval()
    try:
        for _ in range(_SCALE_RETRIES):
            grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            loss = torch.zeros((), dtype=torch.float32, device=params[0].device)
            for batch in batches:
                with torch.enable_grad():
                    losses, _ = token_losses(model, batch)
                    batch_loss = losses.float().sum() / total_tokens
                    for total, g in zip(grads, gradient(batch_loss * scale, params)):
                        total.add_(g.float())
                loss += batch_loss.detach()
            if scale == 1.0 or all(bool(torch.isfinite(g).all()) for g in grads):
                break
            scale /= _SCALE_BACKOFF  # overflow in half precision: back off, as fairseq's scaler
        if scale != 1.0:
            for g in grads:
                g.div_(scale)
    finally:
        model.train(was_training)
    return grads, loss


class CleanGradientEstimator:
    """Clean batches in, the fp32 direction of an update out (see the module docstring)."""

    def __init__(self, settings: EstimatorSettings) -> None:
        settings.check()
        self.settings = settings
        self._current: Optional[CleanGradient] = None  # the direction of the latest anchor
        self._average: Optional[List[Tensor]] = None  # before the preconditioner
        self._average_anchor = -1
        self._average_loss = 0.0
        self._selected: Optional[List[bool]] = None  # --gglm-parameters, once known

    @property
    def current(self) -> Optional[CleanGradient]:
        """The direction of the latest anchor (None before the first)."""
        return self._current

    def anchor(self, update_num: int) -> int:
        """The update whose clean batches give update ``update_num``'s direction."""
        return update_num - update_num % self.settings.interval

    def estimate(
        self,
        update_num: int,
        model: nn.Module,
        token_losses: TokenLossFn,
        clean_batches: Callable[[int], Sequence[Any]],
        loss_scale: float = 1.0,
        all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
        adam_state: Optional[Callable[[], Optional[AdamState]]] = None,
    ) -> CleanGradient:
        """The direction of update ``update_num``.

        clean_batches(k): the batches of the k-th clean gradient (k = anchor // interval), this
        rank's share; all_reduce sums a flat fp32 tensor over data-parallel ranks (None: one
        process); adam_state gives Adam's second moment for the geometry (None: raw).
        """
        anchor = self.anchor(update_num)
        if self._current is not None and self._current.update_num == anchor:
            return self._current
        if self._average is not None and self._average_anchor == anchor:
            # Restored at this anchor (a resume from crash.pt): the average already holds it.
            self._current = self._direction(self._average, self._average_loss, anchor, adam_state)
            return self._current
        batches = clean_batches(anchor // self.settings.interval)
        params = trainable_parameters(model)
        tokens = torch.tensor([float(sum(b["ntokens"] for b in batches))], device=params[0].device)
        if all_reduce is not None:
            tokens = all_reduce(tokens)
        total_tokens = max(float(tokens.item()), 1.0)
        grads, loss = clean_batch_gradient(model, token_losses, batches, total_tokens, loss_scale)
        if all_reduce is not None:
            flat = all_reduce(torch.cat([loss.view(1)] + [g.view(-1) for g in grads]))
            loss = flat[0]
            sizes = [g.numel() for g in grads]
            grads = [chunk.view_as(g) for chunk, g in zip(flat[1:].split(sizes), grads)]
        if not bool(torch.isfinite(loss)) or not all(bool(torch.isfinite(g).all()) for g in grads):
            logger.warning(
                "gglm: non-finite clean gradient at update %d: this update trains unmasked", anchor
            )
            self._current = CleanGradient(direction=None, loss=float(loss), update_num=anchor)
            return self._current
        if self.settings.parameters:
            if self._selected is None:  # the names and the pattern are fixed for the run
                self._selected = selected_parameters(model, self.settings.parameters)
            for g, keep in zip(grads, self._selected):
                if not keep:
                    g.zero_()  # fresh tensors: zeroed in place, nothing allocated per update
        if self.settings.decay > 0 and self._average is not None:
            # New tensors (one kernel each): an earlier update's direction must not change.
            grads = [
                torch.lerp(a, g, 1 - self.settings.decay) for a, g in zip(self._average, grads)
            ]
        self._average, self._average_anchor, self._average_loss = grads, anchor, float(loss)
        self._current = self._direction(grads, float(loss), anchor, adam_state)
        return self._current

    def _direction(
        self,
        average: List[Tensor],
        loss: float,
        anchor: int,
        adam_state: Optional[Callable[[], Optional[AdamState]]],
    ) -> CleanGradient:
        direction = average
        if self.settings.preconditioner == "adam" and adam_state is not None:
            state = adam_state()
            if state is not None:  # None before Adam's first step: the raw gradient
                direction = adam_preconditioned(average, *state)
        return CleanGradient(direction=direction, loss=loss, update_num=anchor)

    # --- exact resume -----------------------------------------------------------------
    def _keeps_average(self) -> bool:
        return self.settings.decay > 0 or self.settings.interval > 1

    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs (tensors on the CPU; nothing with decay 0 and interval 1,
        where every update's direction is computed afresh)."""
        state: Dict[str, Any] = {"average_anchor": self._average_anchor}
        if self._average is None or not self._keeps_average():
            return state
        state["average"] = [a.detach().cpu() for a in self._average]
        state["loss"] = self._average_loss
        current = self._current
        # Only Adam geometry within an interval cannot be rebuilt: the anchor's optimiser
        # state is gone (with K = 1 a crash.pt resume sees the same state again).
        if (
            self.settings.interval > 1
            and current is not None
            and current.direction is not None
            and current.direction is not self._average
            and current.update_num == self._average_anchor
        ):
            state["direction"] = [d.detach().cpu() for d in current.direction]
        return state

    def load_state_dict(self, state: Dict[str, Any], params: Sequence[Tensor]) -> None:
        """Restore onto ``params``' devices; a clear error if the shapes do not fit."""
        self._current = None
        self._average = None
        self._average_anchor = int(state.get("average_anchor", -1))
        if "average" not in state:
            return
        shapes = [tuple(p.shape) for p in params]

        def placed(tensors: List[Tensor]) -> List[Tensor]:
            if [tuple(t.shape) for t in tensors] != shapes:
                raise GGLMUserError(
                    "the checkpoint's GGLM clean-gradient state does not fit this model's "
                    "trainable parameters"
                )
            return [t.to(device=p.device, dtype=torch.float32) for t, p in zip(tensors, params)]

        self._average = placed(state["average"])
        self._average_loss = float(state["loss"])
        if "direction" in state:
            self._current = CleanGradient(
                direction=placed(state["direction"]),
                loss=self._average_loss,
                update_num=self._average_anchor,
            )
