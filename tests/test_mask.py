"""Mask decisions on hand-made alignments."""

import pytest
import torch

from gglm_fairseq.alignment import mask_from_scores, similarity


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
