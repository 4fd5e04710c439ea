"""The clean-gradient estimator alone: fp32 directions from half-precision models, the
average, the interval and the state a resume restores."""

import pytest
import torch
from helpers import build, train_args

from gglm_fairseq.clean_gradient import (
    CleanGradientEstimator,
    EstimatorSettings,
    clean_batch_gradient,
)


@pytest.fixture()
def setup(data_bin, tmp_path):
    task, model, criterion = build(train_args(data_bin, tmp_path / "c", "--dropout", "0"))
    batch = task.clean_batch_iterators(model).batch(0)
    return task, model, criterion, batch


def test_half_precision_clean_gradient_matches_fp32(setup):
    """fairseq's fp16 parameters: backpropagated unscaled, most entries of the mean loss's
    gradient flush to zero; under fairseq's loss scale they match the fp32 gradient, and
    the loss scale (even one that overflows at first) does not change the result."""
    _, model, criterion, batch = setup
    tokens = float(batch["ntokens"])
    reference, _ = clean_batch_gradient(model, criterion.token_losses, [batch], tokens)
    model.half()
    unscaled = [
        g.float()
        for g in torch.autograd.grad(
            criterion.token_losses(model.eval(), batch)[0].float().sum() / tokens / 65536,
            [p for p in model.parameters()],
        )
    ]  # a mean over a 4k-token batch, as the default clean batch of a big run
    zeros_unscaled = sum(int((g == 0).sum()) for g in unscaled)
    results = {}
    for scale in (128.0, 2.0**15, 2.0**24):
        grads, loss = clean_batch_gradient(model, criterion.token_losses, [batch], tokens, scale)
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        results[scale] = grads
    zeros_scaled = sum(int((g == 0).sum()) for g in results[128.0])
    zeros_reference = sum(int((g == 0).sum()) for g in reference)
    assert zeros_unscaled > 2 * zeros_scaled, (zeros_unscaled, zeros_scaled)
    assert zeros_scaled <= zeros_reference + sum(g.numel() for g in reference) // 100
    size = max(float(g.abs().max()) for g in reference)
    for grads in results.values():
        error = max(float((g - r).abs().max()) for g, r in zip(grads, reference))
        assert error / size < 5e-2, error / size  # fp16 weights and activations: ~3 digits
    model.float()


def test_average_interval_and_state_round_trip(setup):
    task, model, criterion, _ = setup
    iterator = task.clean_batch_iterators(model)

    def batches(k):
        return [iterator.batch(k)]

    settings = EstimatorSettings(interval=2, decay=0.5)
    estimator = CleanGradientEstimator(settings)
    first = estimator.estimate(0, model, criterion.token_losses, batches)
    assert estimator.estimate(1, model, criterion.token_losses, batches) is first
    state = estimator.state_dict()
    assert state["average_anchor"] == 0 and "direction" not in state
    restored = CleanGradientEstimator(settings)
    restored.load_state_dict(state, list(model.parameters()))
    again = restored.estimate(1, model, criterion.token_losses, batches)  # mid-interval
    assert all(torch.equal(a, b) for a, b in zip(again.direction, first.direction))
    third = estimator.estimate(2, model, criterion.token_losses, batches)
    raw, _ = clean_batch_gradient(
        model, criterion.token_losses, batches(1), float(batches(1)[0]["ntokens"])
    )
    for got, old, new in zip(third.direction, first.direction, raw):
        torch.testing.assert_close(got, 0.5 * old + 0.5 * new, atol=1e-6, rtol=1e-5)


def test_state_of_another_model_is_refused(setup):
    task, model, criterion, _ = setup
    estimator = CleanGradientEstimator(EstimatorSettings(decay=0.5))
    state = {"average_anchor": 3, "average": [torch.zeros(2)], "loss": 1.0}
    with pytest.raises(ValueError, match="does not fit this model"):
        estimator.load_state_dict(state, list(model.parameters()))


@pytest.mark.parametrize(
    "settings, message",
    [
        (EstimatorSettings(interval=0), "--gglm-clean-grad-interval must be >= 1"),
        (EstimatorSettings(decay=1.0), r"--gglm-clean-grad-ema must be in \[0, 1\)"),
        (EstimatorSettings(parameters="a(["), "--gglm-parameters: bad regular expression"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        CleanGradientEstimator(settings)


def test_state_before_any_direction_and_right_after_a_restore(setup):
    """Review finding 5: a checkpoint written before the first clean gradient, or right after
    a restore, must save (it raised AttributeError)."""
    task, model, criterion, _ = setup
    estimator = CleanGradientEstimator(EstimatorSettings(decay=0.5))
    assert estimator.state_dict() == {"average_anchor": -1}
    params = list(model.parameters())
    state = {"average_anchor": 4, "average": [torch.ones_like(p) for p in params], "loss": 2.0}
    estimator.load_state_dict(state, params)
    saved = estimator.state_dict()
    assert saved["average_anchor"] == 4 and saved["loss"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(saved["average"], state["average"]))
