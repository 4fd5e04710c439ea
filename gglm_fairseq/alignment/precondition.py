"""Alignment in the optimiser's geometry: the clean gradient seen through Adam.

With Adam the step that example i's gradient causes is, to first order and momentum aside,
-lr * P grad l_i with P = diag(1 / (sqrt(v_hat) + eps)), v_hat the bias-corrected second
moment. The clean loss then changes by -lr * <grad l_i, P g_c>: thresholding that sign asks
"would training on i lower the clean loss?" for the optimiser actually in use, where the raw
<grad l_i, g_c> lets the parameters with the largest gradients (which Adam damps) decide.
"""

from __future__ import annotations

from typing import List, Sequence

from torch import Tensor


def adam_preconditioned(
    direction: Sequence[Tensor],
    second_moment: Sequence[Tensor],
    step: float,
    beta2: float,
    eps: float,
) -> List[Tensor]:
    """P g_c, one tensor per parameter (shapes of ``direction``).

    second_moment: Adam's exp_avg_sq per parameter, after ``step`` >= 1 steps.
    """
    if step < 1:
        raise ValueError(f"Adam's second moment needs step >= 1, got {step}")
    if len(direction) != len(second_moment) or any(
        d.shape != v.shape for d, v in zip(direction, second_moment)
    ):
        raise ValueError("second_moment must have one tensor per direction tensor, same shapes")
    correction = 1.0 - beta2**step
    return [
        d / ((v.to(device=d.device, dtype=d.dtype) / correction).sqrt() + eps)
        for d, v in zip(direction, second_moment)
    ]
