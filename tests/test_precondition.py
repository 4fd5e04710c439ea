"""--gglm-preconditioner adam: the clean gradient seen through Adam's second moment."""

import pytest
import torch
from fairseq.optim.adam import Adam
from helpers import build, train, train_args

from gglm_fairseq.alignment import adam_preconditioned
from gglm_fairseq.record import RECORD_FILE, ExampleRecord
from gglm_fairseq.tasks.translation_with_clean_set import adam_second_moment


def test_alignment_is_the_first_order_change_of_the_clean_loss_under_adam():
    """With beta1 = 0 Adam's step on one example's gradient g_i is -lr P g_i (P from the
    second moment after that step), so <g_i, P g_c> predicts the clean loss change."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    clean_x = torch.randn(8, 3, dtype=torch.float64)
    example_x = torch.randn(1, 3, dtype=torch.float64)
    clean_loss = lambda: (weight @ clean_x.T).sin().pow(2).mean()  # noqa: E731
    g_clean = torch.autograd.grad(clean_loss(), weight)[0]
    g_example = torch.autograd.grad((weight @ example_x.T).cos().sum(), weight)[0]

    lr = 1e-4
    adam = Adam([weight], lr=lr, betas=(0.0, 0.98), eps=1e-8)
    # An earlier step, so that v is not g_i^2 alone.
    weight.grad = torch.randn(5, 3, dtype=torch.float64)
    adam.step()
    before = clean_loss().item()
    weight.grad = g_example.clone()
    adam.step()
    change = clean_loss().item() - before

    moments, step, beta2, eps = adam_second_moment(adam, [weight])
    preconditioned = adam_preconditioned([g_clean], moments, step, beta2, eps)[0]
    predicted = -lr * (g_example * preconditioned).sum().item()
    assert step == 2
    assert change == pytest.approx(predicted, rel=2e-2)


def test_second_moment_from_one_flat_fp32_copy():
    """fairseq's fp16/bf16 optimiser steps one flat fp32 tensor holding every parameter."""
    params = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    flat = torch.nn.Parameter(torch.cat([p.detach().view(-1) for p in params]))
    adam = torch.optim.Adam([flat], betas=(0.9, 0.99), eps=1e-6)
    flat.grad = torch.arange(10.0)
    adam.step()
    moments, step, beta2, eps = adam_second_moment(adam, params)
    assert (step, beta2, eps) == (1.0, 0.99, 1e-6)
    assert [m.shape for m in moments] == [p.shape for p in params]
    torch.testing.assert_close(torch.cat([m.view(-1) for m in moments]),
                               0.01 * torch.arange(10.0) ** 2)  # fmt: skip


def test_no_second_moment_before_the_first_step_and_errors():
    param = torch.nn.Parameter(torch.randn(3))
    assert adam_second_moment(torch.optim.Adam([param]), [param]) is None
    with pytest.raises(ValueError, match="needs an Adam optimiser"):
        adam_second_moment(torch.optim.SGD([param], lr=0.1), [param])
    other = torch.nn.Parameter(torch.randn(4))
    adam = torch.optim.Adam([other])
    other.grad = torch.ones(4)
    adam.step()
    with pytest.raises(ValueError, match="one to one"):
        adam_second_moment(adam, [param])
    with pytest.raises(ValueError, match="step >= 1"):
        adam_preconditioned([param], [param], 0, 0.98, 1e-8)


def test_task_hands_the_criterion_the_preconditioned_clean_gradient(data_bin, tmp_path):
    # The batch's own gradient, not averaged with the earlier ones (the default).
    task, model, criterion = build(
        train_args(data_bin, tmp_path / "ckpt", "--gglm-clean-grad-ema", "0",
                   "--gglm-preconditioner", "adam")
    )  # fmt: skip
    params = list(model.parameters())
    adam = Adam(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
    # Before Adam's first step: the raw clean gradient.
    raw = task.clean_gradient(model, criterion, 0, adam)
    expected_raw = clean_gradient_by_hand(task, model, criterion, 0)
    for got, want in zip(raw.direction, expected_raw):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    for p in params:
        p.grad = torch.randn_like(p)
    adam.step()
    direction = task.clean_gradient(model, criterion, 1, adam).direction
    expected = clean_gradient_by_hand(task, model, criterion, 1)
    for got, g, p in zip(direction, expected, params):
        v_hat = adam.state[p]["exp_avg_sq"] / (1 - 0.98)
        torch.testing.assert_close(got, g / (v_hat.sqrt() + 1e-8), atol=1e-5, rtol=1e-4)


def clean_gradient_by_hand(task, model, criterion, update_num):
    batch = task.clean_batch_iterators(model).batch(update_num)
    model.eval()
    losses, _ = criterion.token_losses(model, batch)
    grads = torch.autograd.grad(losses.sum() / batch["ntokens"], list(model.parameters()))
    model.train()
    return grads


@pytest.mark.slow
def test_training_with_the_adam_preconditioner_masks_differently(data_bin, tmp_path):
    masked = {}
    for preconditioner in ("none", "adam"):
        save = tmp_path / preconditioner
        train(train_args(data_bin, save, "--max-update", "6",
                         "--gglm-preconditioner", preconditioner))  # fmt: skip
        record = ExampleRecord.load(str(save / RECORD_FILE))
        masked[preconditioner] = record.history[:, 2]
    # Update 0 has no Adam state yet: both use the raw clean gradient.
    assert masked["none"][0] == masked["adam"][0]
    assert masked["none"][1:].tolist() != masked["adam"][1:].tolist()


def test_sgd_with_the_adam_preconditioner_fails_at_the_first_update(data_bin, tmp_path):
    argv = train_args(data_bin, tmp_path / "ckpt", "--max-update", "2",
                      "--gglm-preconditioner", "adam")  # fmt: skip
    argv[argv.index("adam")] = "sgd"
    with pytest.raises(ValueError, match="needs an Adam optimiser"):
        train(argv)
