from .gradient_masked_cross_entropy import (  # noqa: F401
    Decisions,
    GradientMaskedCrossEntropyConfig,
    GradientMaskedCrossEntropyCriterion,
)
