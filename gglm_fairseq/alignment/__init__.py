"""The alignment core: pure torch, no fairseq.

An engine computes, in one call, the per-token losses of a batch (with their graph) and the
alignments <grad l_i, g_c> of its examples or tokens with a fixed direction g_c. All engines
give the same numbers; they differ in cost.
"""

from __future__ import annotations

from typing import Dict

from .core import (
    GRANULARITIES,
    AlignedLoss,
    Engine,
    TokenLossFn,
    gradient,
    restricted,
    selected_parameters,
    substituted_parameters,
    trainable_parameter_names,
    trainable_parameters,
    units,
)
from .ghost import (
    GhostUnsupportedError,
    ghost_aligned_loss,
    ghost_problem,
    unfused_attention,
    unsupported_parameters,
)
from .jvp import jvp_aligned_loss
from .loop import loop_aligned_loss
from .mask import (
    SIMILARITIES,
    THRESHOLD_MODES,
    WEIGHTINGS,
    MaskRule,
    keep_top_tokens,
    mask_from_scores,
    mask_lowest_share,
    similarity,
    soft_weights,
    unit_weights,
)
from .precondition import AdamSecondMoment, adam_preconditioned, adam_second_moment
from .vmap import vmap_aligned_loss

ENGINES: Dict[str, Engine] = {
    "loop": loop_aligned_loss,
    "vmap": vmap_aligned_loss,
    "jvp": jvp_aligned_loss,
    "ghost": ghost_aligned_loss,
}


def get_engine(name: str) -> Engine:
    """The engine registered under ``name``; a clear error for an unknown one."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown alignment engine {name!r}; choose one of {sorted(ENGINES)}"
        ) from None


__all__ = [
    "ENGINES",
    "GRANULARITIES",
    "SIMILARITIES",
    "AdamSecondMoment",
    "THRESHOLD_MODES",
    "WEIGHTINGS",
    "AlignedLoss",
    "Engine",
    "GhostUnsupportedError",
    "MaskRule",
    "TokenLossFn",
    "adam_preconditioned",
    "adam_second_moment",
    "get_engine",
    "ghost_aligned_loss",
    "ghost_problem",
    "gradient",
    "jvp_aligned_loss",
    "keep_top_tokens",
    "loop_aligned_loss",
    "mask_from_scores",
    "mask_lowest_share",
    "restricted",
    "selected_parameters",
    "similarity",
    "soft_weights",
    "substituted_parameters",
    "trainable_parameter_names",
    "trainable_parameters",
    "unfused_attention",
    "unit_weights",
    "units",
    "unsupported_parameters",
    "vmap_aligned_loss",
]
