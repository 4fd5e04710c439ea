"""Mask decisions on hand-made alignments."""

import pytest
import torch

from gglm_fairseq.alignment import (
    MaskRule,
    keep_top_tokens,
    mask_from_scores,
    mask_lowest_share,
    similarity,
    soft_weights,
    unit_weights,
)


def test_dot_threshold_zero_keeps_only_positive():
    alignment = torch.tensor([2.0, 1e-9, 0.0, -1e-9, -3.0])
    scores = similarity(alignment, "dot")
    assert mask_from_scores(scores).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_threshold_moves_the_cut():
    alignment = torch.tensor([2.0, 0.5, -0.5])
    assert mask_from_scores(alignment, 1.0).tolist() == [1.0, 0.0, 0.0]
    assert mask_from_scores(alignment, -1.0).tolist() == [1.0, 1.0, 1.0]


def test_cosine_scales_by_both_norms():
    alignment = torch.tensor([2.0, -1.0, 3.0, 1.0])
    norms = torch.tensor([1.0, 1.0, 6.0, 0.0])
    direction = [torch.tensor([2.0, 0.0]), torch.tensor([0.0])]  # ||g_c|| = 2
    scores = similarity(alignment, "cosine", norms, direction)
    assert torch.allclose(scores, torch.tensor([1.0, -0.5, 0.25, 0.0]))
    # Same mask as dot at threshold 0, except a zero gradient (cosine 0) is masked.
    assert mask_from_scores(scores, 0.0).tolist() == [1.0, 0.0, 1.0, 0.0]
    # A threshold on the cosine differs from one on the dot product.
    assert mask_from_scores(scores, 0.5).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert mask_from_scores(alignment, 0.5).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_token_granularity_keeps_shape():
    alignment = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert mask_from_scores(alignment).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_bad_similarity_and_missing_norms():
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity(torch.zeros(2), "euclid")
    with pytest.raises(ValueError, match="needs the gradient norms"):
        similarity(torch.zeros(2), "cosine")


def test_keep_top_tokens_takes_the_best_scores_within_the_budget():
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])
    tokens = torch.tensor([4, 5, 2, 6, 3])
    eligible = (scores > 0).float()
    # 3.0 (5 tokens) + 2.0 (6) = 11 fit in 12; 1.0 (3 more) does not, so nothing after it.
    assert keep_top_tokens(scores, tokens, eligible, 12).tolist() == [0, 1, 0, 1, 0]
    assert keep_top_tokens(scores, tokens, eligible, 14).tolist() == [0, 1, 0, 1, 1]
    # A budget above every eligible token keeps exactly the eligible ones (never -1.0).
    assert keep_top_tokens(scores, tokens, eligible, 100).tolist() == eligible.tolist()


def test_keep_top_tokens_breaks_ties_by_row_and_can_keep_nothing():
    scores = torch.tensor([1.0, 2.0, 2.0])
    tokens = torch.tensor([1, 4, 4])
    ones = torch.ones(3)
    assert keep_top_tokens(scores, tokens, ones, 4).tolist() == [0, 1, 0]  # earlier row
    assert keep_top_tokens(scores, tokens, ones, 3).tolist() == [0, 0, 0]  # best is too long
    nothing_eligible = torch.zeros(3)
    assert keep_top_tokens(scores, tokens, nothing_eligible, 100).tolist() == [0, 0, 0]


def test_soft_weights_have_mean_one_and_zero_where_the_mask_is():
    scores = torch.tensor([3.0, 1.0, 0.5, -2.0])
    weights = soft_weights(scores, 0.5)  # excess 2.5, 0.5, 0, 0: mean 0.75
    assert torch.allclose(weights, torch.tensor([2.5, 0.5, 0.0, 0.0]) / 0.75)
    assert weights.mean().item() == pytest.approx(1.0)
    assert torch.equal(weights > 0, mask_from_scores(scores, 0.5) > 0)
    assert soft_weights(scores, 5.0).tolist() == [0.0, 0.0, 0.0, 0.0]  # no NaN


def test_mask_lowest_share_masks_the_floor_of_the_share():
    scores = torch.tensor([0.3, -1.0, 2.0, 0.3, 5.0])
    # 2 of 5; of the tied 0.3s the earlier row goes first.
    assert mask_lowest_share(scores, 0.4).tolist() == [0, 0, 1, 1, 1]
    assert mask_lowest_share(scores[:3], 0.4).tolist() == [1, 0, 1]  # floor(1.2) = 1
    assert mask_lowest_share(scores, 0.0).tolist() == [1, 1, 1, 1, 1]


def test_unit_weights_batch_mean_cut_is_relative_to_the_batch():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3
    tokens = torch.ones(4, dtype=torch.long)
    assert unit_weights(scores, tokens, MaskRule(threshold_mode="batch-mean")).tolist() == [
        0, 0, 0, 1
    ]
    shifted = MaskRule(threshold=-1.5, threshold_mode="batch-mean")
    assert unit_weights(scores, tokens, shifted).tolist() == [0, 1, 1, 1]
    assert unit_weights(scores + 100, tokens, shifted).tolist() == [0, 1, 1, 1]
    soft = MaskRule(threshold_mode="batch-mean", weighting="soft")  # excess 0, 0, 0, 3
    assert unit_weights(scores, tokens, soft).tolist() == [0, 0, 0, 4]


def test_unit_weights_token_budget_applies_after_the_threshold_mode():
    scores = torch.tensor([4.0, -3.0, 2.0, 1.0, -1.0])
    tokens = torch.tensor([3, 1, 3, 3, 1])
    quantile = MaskRule(threshold_mode="batch-quantile", quantile=0.4, keep_tokens=6)
    # The quantile masks -3 and -1; of the rest, 4.0 and 2.0 fill the 6 tokens.
    assert unit_weights(scores, tokens, quantile).tolist() == [1, 0, 1, 0, 0]
    absolute = MaskRule(threshold=1.5, keep_tokens=100)
    assert unit_weights(scores, tokens, absolute).tolist() == [1, 0, 1, 0, 0]
