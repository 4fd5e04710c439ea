"""Options that lower the noise of the mask: pooled clean batches, a running average of the
clean gradient, and a per-example running score."""

import numpy as np
import pytest
import torch
from helpers import build, train, train_args

from gglm_fairseq.record import RECORD_FILE, ExampleRecord


def gradient_of(model, criterion, batches):
    model.eval()
    tokens = sum(b["ntokens"] for b in batches)
    loss = sum(criterion.token_losses(model, b)[0].sum() for b in batches) / tokens
    return torch.autograd.grad(loss, list(model.parameters()))


def test_clean_batches_per_update_pool_their_tokens(data_bin, tmp_path):
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "c", "--clean-batches-per-update", "3",
                   "--clean-batch-size", "4")
    )  # fmt: skip
    clean = task.clean_gradient(model, criterion, 1)
    batches = task.clean_batch_iterators(model)
    expected = gradient_of(model, criterion, [batches.batch(i) for i in (3, 4, 5)])
    for got, want in zip(clean.direction, expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_clean_gradient_running_average(data_bin, tmp_path):
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "c", "--gglm-clean-grad-ema", "0.75")
    )
    first = [g.clone() for g in task.clean_gradient(model, criterion, 0).direction]
    second = task.clean_gradient(model, criterion, 1).direction
    raw = gradient_of(model, criterion, [task.clean_batch_iterators(model).batch(1)])
    for avg, old, new in zip(second, first, raw):
        assert torch.allclose(avg, 0.75 * old + 0.25 * new, atol=1e-6)


def test_running_alignment_is_the_mean_with_the_past():
    record = ExampleRecord()
    record.update([0, 2], [4.0, -2.0], [0.0, 1.0], update_num=0)
    record.update([0], [2.0], [0.0], update_num=1)
    running = record.running_alignment(torch.tensor([0, 2, 5]), torch.tensor([-9.0, 3.0, 1.0]))
    assert torch.allclose(running, torch.tensor([(4 + 2 - 9) / 3, (-2 + 3) / 2, 1.0]))


def test_running_score_masks_on_the_history(data_bin, tmp_path):
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "c", "--gglm-score", "running", "--dropout", "0")
    )
    sample = next(
        task.get_batch_iterator(task.dataset("train"), max_tokens=400, seed=1)
        .next_epoch_itr(shuffle=False)
    )
    model.train()
    clean = task.clean_gradient(model, criterion, 0)
    ids = sample["id"].tolist()
    # A long, very negative past outweighs whatever this update says.
    task.record.update(ids, [-1e6] * len(ids), [1.0] * len(ids), update_num=0)
    _, sample_size, log, _ = criterion.masked_forward(model, sample, clean, record=task.record)
    assert log["gglm_sentences_masked"] == len(ids) and sample_size == 0


def test_clean_gradient_restricted_to_chosen_parameters(data_bin, tmp_path):
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "c", "--gglm-parameters", r"encoder_attn\.")
    )
    clean = task.clean_gradient(model, criterion, 0).direction
    full = gradient_of(model, criterion, [task.clean_batch_iterators(model).batch(0)])
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("encoder_attn." in name for name in names)
    for name, got, want in zip(names, clean, full):
        if "encoder_attn." in name:
            assert torch.allclose(got, want, atol=1e-6) and want.abs().sum() > 0, name
        else:
            assert not got.any(), name


def test_chosen_parameters_must_exist(data_bin, tmp_path):
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "c", "--gglm-parameters", "no_such_layer")
    )
    with pytest.raises(ValueError, match="'no_such_layer' matches no trainable parameter"):
        task.clean_gradient(model, criterion, 0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gglm-parameters", "encoder_attn(["], "--gglm-parameters: bad regular expression"),
        (["--gglm-parameters", "fc1", "--gglm-similarity", "cosine", "--gglm-threshold", "0.1",
          "--gglm-engine", "vmap"], "--gglm-parameters with --gglm-similarity cosine"),
        (["--gglm-clean-grad-ema", "1.0"], "--gglm-clean-grad-ema must be in"),
        (["--gglm-score", "running", "--gglm-granularity", "token"], "--gglm-score running"),
        (["--clean-batches-per-update", "0"], "--clean-batches-per-update must be >= 1"),
    ],
)
def test_bad_values(data_bin, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        build(train_args(data_bin, tmp_path / "c", *flags))


@pytest.mark.slow
def test_pooled_batches_advance_the_clean_sequence(data_bin, tmp_path, monkeypatch):
    from gglm_fairseq.tasks.translation_with_clean_set import CleanBatches

    asked = []
    original = CleanBatches.batch
    monkeypatch.setattr(CleanBatches, "batch", lambda s, i: asked.append(i) or original(s, i))
    train(train_args(data_bin, tmp_path / "ckpt", "--max-update", "3",
                     "--clean-batches-per-update", "2", "--gglm-score", "running"))  # fmt: skip
    assert asked == [0, 1, 2, 3, 4, 5]
    record = ExampleRecord.load(str(tmp_path / "ckpt" / RECORD_FILE))
    assert np.isfinite(record.alignment_sum).all()
