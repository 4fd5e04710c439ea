"""Alignment in the optimiser's geometry: the clean gradient seen through Adam.

With Adam the step that example i's gradient causes is, to first order and momentum aside,
-lr * P grad l_i with P = diag(1 / (sqrt(v_hat) + eps')), v_hat the bias-corrected second
moment. The clean loss then changes by -lr * <grad l_i, P g_c>: thresholding that sign asks
"would training on i lower the clean loss?" for the optimiser actually in use, where the raw
<grad l_i, g_c> lets the parameters with the largest gradients (which Adam damps) decide.

eps' depends on the implementation: torch's Adam/AdamW and apex's FusedAdam add eps to
sqrt(v_hat) (eps' = eps); fairseq's own Adam and its FusedAdamV1 add it to sqrt(v) and fold
the bias correction into the step size, so eps' = eps / sqrt(1 - beta2^t).

A parameter Adam holds no state for has never had a gradient; it gets a zero component.
Such a parameter is almost always one the loss does not use, so grad l_i is zero there
anyway; one used for the first time would get Adam's first step, ~lr * sign(grad l_i),
which depends on the example's own gradient and has no fixed P. Leaving it out of the
alignment is the honest choice; switching the preconditioner off for every parameter
because of it (what an all-or-nothing rule would do) is not.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import GGLMUserError

Moment = Tuple[Optional[Tensor], float]  # one optimised tensor's (second moment, step)


class AdamSecondMoment(NamedTuple):
    """What Adam's step direction depends on, in :func:`adam_preconditioned`'s argument order.

    second_moment: per parameter, exp_avg_sq in fp32 (or wider) at its true scale (the parameter's
                   shape), or None where Adam holds no state for the parameter.
    steps:         per parameter, Adam's step count for it (its bias correction).
    eps_before_correction: eps is added to sqrt(v), not to sqrt(v_hat) (fairseq's Adam).
    """

    second_moment: List[Optional[Tensor]]
    steps: List[float]
    beta2: float
    eps: float
    eps_before_correction: bool


def adam_preconditioned(
    direction: Sequence[Tensor],
    second_moment: Sequence[Optional[Tensor]],
    steps: Sequence[float],
    beta2: float,
    eps: float,
    eps_before_correction: bool,
) -> List[Tensor]:
    """P g_c, one tensor per parameter (shapes of ``direction``): with beta1 = 0, Adam's
    parameter change is exactly -lr * P g for the gradient g it steps on (weight decay aside).

    second_moment: Adam's exp_avg_sq per parameter after ``steps`` >= 1 steps; None gives
    that parameter a zero component.
    """
    if not len(direction) == len(second_moment) == len(steps) or any(
        v is not None and d.shape != v.shape for d, v in zip(direction, second_moment)
    ):
        raise ValueError("second_moment must have one tensor per direction tensor, same shapes")
    preconditioned = []
    for d, v, step in zip(direction, second_moment, steps):
        if v is None:
            preconditioned.append(torch.zeros_like(d))
            continue
        if step < 1:
            raise ValueError(f"Adam's second moment needs step >= 1, got {step}")
        root_correction = math.sqrt(1.0 - beta2**step)
        root_v = v.to(device=d.device, dtype=d.dtype).sqrt()
        if eps_before_correction:  # fairseq: lr sqrt(c2) m / (sqrt(v) + eps)
            preconditioned.append(d * root_correction / (root_v + eps))
        else:  # torch: lr m / (sqrt(v) / sqrt(c2) + eps)
            preconditioned.append(d / (root_v / root_correction + eps))
    return preconditioned


def adam_second_moment(optimizer: Any, params: Sequence[Tensor]) -> Optional[AdamSecondMoment]:
    """Adam's state for ``params`` (the model's trainable parameters), read from a fairseq
    optimiser (plain, fp16/bf16 with flat or per-parameter fp32 copies, fused, with
    --fp16-adam-stats) or a torch Adam/AdamW; None before its first step. A clear error
    for any other optimiser, several betas/eps, or state that does not cover ``params``."""
    inner = getattr(optimizer, "optimizer", optimizer)
    eps_before_correction = _eps_before_bias_correction(inner)
    groups = inner.param_groups
    settings = {(tuple(g.get("betas", ())), g.get("eps")) for g in groups}
    if any("betas" not in g or "eps" not in g for g in groups) or len(settings) != 1:
        raise GGLMUserError(
            "--gglm-preconditioner adam needs an Adam optimiser (--optimizer adam) with one "
            f"beta2 and eps for all parameters; got {type(inner).__name__}"
        )
    if not all(g.get("bias_correction", True) for g in groups):
        raise GGLMUserError("--gglm-preconditioner adam needs Adam with bias correction")
    held = [(p, group) for group in groups for p in group["params"]]
    moments = [_second_moment(inner.state.get(p), group) for p, group in held]
    if all(m is None for m, _ in moments):
        return None
    ((betas, eps),) = settings
    arranged = _per_parameter(held, moments, params)
    return AdamSecondMoment(
        [m for m, _ in arranged], [s for _, s in arranged], float(betas[1]), float(eps),
        eps_before_correction,
    )  # fmt: skip


def _eps_before_bias_correction(inner: Any) -> bool:
    """Whether ``inner`` adds eps to sqrt(v) (fairseq's Adam) rather than to sqrt(v_hat)
    (torch's, apex's); a clear error for an optimiser that is not one of these Adams."""
    if _is_a(inner, "fairseq.optim.fused_adam", "FusedAdamV1"):
        if inner.eps_mode != 1:  # fairseq never builds it with eps inside the square root
            raise GGLMUserError(
                "--gglm-preconditioner adam does not support FusedAdam with eps_inside_sqrt"
            )
        return True
    if _is_a(inner, "fairseq.optim.adam", "Adam"):
        return True
    if _is_a(inner, "apex.", "FusedAdam") or isinstance(
        inner, (torch.optim.Adam, torch.optim.AdamW)
    ):
        return False
    raise GGLMUserError(
        "--gglm-preconditioner adam needs an Adam optimiser (--optimizer adam); "
        f"got {type(inner).__name__}"
    )


def _is_a(obj: Any, module: str, name: str) -> bool:
    """Whether ``obj``'s class is, or derives from, class ``name`` of a module whose name
    starts with ``module``: this package does not import fairseq or apex."""
    return any(
        cls.__name__ == name and cls.__module__.startswith(module) for cls in type(obj).__mro__
    )


def _second_moment(state: Optional[Dict[str, Any]], group: Dict[str, Any]) -> Moment:
    """(fp32 second moment, step count) of one optimised tensor; (None, 0) without state.
    AMSGrad divides by the running maximum instead."""
    key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
    if not state or key not in state:
        return None, 0.0
    # apex's FusedAdam counts steps per group, fairseq's FusedAdamV1 falls back to it.
    step = state.get("step", group.get("step"))
    if step is None:
        raise GGLMUserError("--gglm-preconditioner adam: Adam's state has no step count")
    moment = state[key]
    moment = moment.to(torch.promote_types(moment.dtype, torch.float32))  # fp32 at least
    if "exp_avg_sq_scale" in state:  # --fp16-adam-stats keeps v / scale in fp16
        moment = moment * state["exp_avg_sq_scale"]
    return moment, float(step)


def _per_parameter(
    held: Sequence[Tuple[Tensor, Dict[str, Any]]],
    moments: Sequence[Moment],
    params: Sequence[Tensor],
) -> List[Moment]:
    """``moments`` (one per optimised tensor in ``held``) as one per parameter of ``params``:
    the same tensors, per-parameter fp32 copies in order, or one flat fp32 copy of all."""
    by_tensor = {id(p): m for (p, _), m in zip(held, moments)}
    if all(id(p) in by_tensor for p in params):
        return [by_tensor[id(p)] for p in params]
    if [p.shape for p, _ in held] == [p.shape for p in params]:
        return list(moments)
    sizes = [p.numel() for p in params]
    steps = {step for _, step in moments}
    if sum(p.numel() for p, _ in held) != sum(sizes) or len(steps) != 1:
        raise GGLMUserError(
            "--gglm-preconditioner adam: the optimiser's state does not cover the model's "
            "trainable parameters one to one (sharded optimiser state is not supported)"
        )
    # fairseq's fp16/bf16 optimiser keeps one flat fp32 copy of all parameters.
    flats = [m.view(-1) for m, _ in moments]
    flat = flats[0] if len(flats) == 1 else torch.cat(flats)  # no copy of a single one
    (step,) = steps
    return [(chunk.view(p.shape), step) for chunk, p in zip(flat.split(sizes), params)]
