"""--gglm-preconditioner adam: the clean gradient seen through Adam's second moment."""

import pytest
import torch
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
from fairseq.optim.adamax import Adamax
from fairseq.optim.fused_adam import FusedAdamV1
from helpers import build, train, train_args

from gglm_fairseq.alignment import adam_preconditioned
from gglm_fairseq.alignment.precondition import adam_second_moment
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import RECORD_FILE, ExampleRecord


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

    state = adam_second_moment(adam, [weight])
    preconditioned = adam_preconditioned([g_clean], *state)[0]
    predicted = -lr * (g_example * preconditioned).sum().item()
    assert state.steps == [2.0]
    assert change == pytest.approx(predicted, rel=2e-2)


def test_second_moment_from_one_flat_fp32_copy():
    """fairseq's fp16/bf16 optimiser steps one flat fp32 tensor holding every parameter."""
    params = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    flat = torch.nn.Parameter(torch.cat([p.detach().view(-1) for p in params]))
    adam = torch.optim.Adam([flat], betas=(0.9, 0.99), eps=1e-6)
    flat.grad = torch.arange(10.0)
    adam.step()
    moments, steps, beta2, eps, _ = adam_second_moment(adam, params)
    assert (steps, beta2, eps) == ([1.0, 1.0], 0.99, 1e-6)
    assert [m.shape for m in moments] == [p.shape for p in params]
    torch.testing.assert_close(torch.cat([m.view(-1) for m in moments]),
                               0.01 * torch.arange(10.0) ** 2)  # fmt: skip


def fairseq_adam(params, eps, amsgrad=False):
    """fairseq's ``--optimizer adam`` (its own Adam on a CPU), beta1 = 0."""
    config = FairseqAdamConfig(lr=[1e-4], adam_betas="(0.0, 0.9)", adam_eps=eps, tpu=False)
    optimizer = FairseqAdam(config, params)
    optimizer.optimizer.param_groups[0]["amsgrad"] = amsgrad
    return optimizer


OPTIMISERS = {
    "fairseq": lambda params, eps: fairseq_adam(params, eps),
    "fairseq-amsgrad": lambda params, eps: fairseq_adam(params, eps, amsgrad=True),
    "torch": lambda params, eps: torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.9), eps=eps),
    "torch-adamw": lambda params, eps: torch.optim.AdamW(
        params, lr=1e-4, betas=(0.0, 0.9), eps=eps, weight_decay=0.0
    ),
}


def stepped(make, eps=1e-3):
    """A toy model's (weight, bias), its optimiser after two steps (the bias skipped the
    first: it has one step, the weight two), the last gradients and parameter change.
    Gradients ~1e-3 and eps 1e-3, so that where eps goes changes the direction."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=generator))
    bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=generator))
    optimizer = make([weight, bias], eps)
    weight.grad = 1e-3 * torch.randn(4, 3, dtype=torch.float64, generator=generator)
    optimizer.step()
    grads = [1e-3 * torch.randn(p.shape, dtype=torch.float64, generator=generator)
             for p in (weight, bias)]  # fmt: skip
    before = [weight.detach().clone(), bias.detach().clone()]
    weight.grad, bias.grad = [g.clone() for g in grads]
    optimizer.step()
    change = [p.detach() - b for p, b in zip((weight, bias), before)]
    return [weight, bias], optimizer, grads, change


def assert_step_direction(preconditioned, change, lr=1e-4):
    """With beta1 = 0 Adam's change is exactly -lr P g: P g points down it, ratio -lr everywhere."""
    got, want = (
        torch.cat([p.view(-1) for p in preconditioned]),
        torch.cat([c.view(-1) for c in change]),
    )
    assert torch.nn.functional.cosine_similarity(got, -want, dim=0) > 1 - 1e-12
    torch.testing.assert_close(want / got, torch.full_like(got, -lr), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", OPTIMISERS)
def test_preconditioned_gradient_is_the_direction_of_a_real_adam_step(name):
    """fairseq's Adam adds eps to sqrt(v) (eps / sqrt(1 - beta2^t) on sqrt(v_hat)), torch's
    to sqrt(v_hat); each parameter's bias correction uses its own step count."""
    params, optimizer, grads, change = stepped(OPTIMISERS[name])
    state = adam_second_moment(optimizer, params)
    assert_step_direction(adam_preconditioned(grads, *state), change)


def test_fp16_adam_stats_give_the_true_second_moment():
    """fairseq's FusedAdamV1 under --fp16-adam-stats keeps v / scale in fp16 (CUDA only; its
    state is rebuilt here from a real fairseq Adam step, as FusedAdamV1 stores it)."""
    params, adam, grads, change = stepped(OPTIMISERS["fairseq"])
    fused = FusedAdamV1.__new__(FusedAdamV1)  # its constructor needs the CUDA extension
    torch.optim.Optimizer.__init__(fused, params, dict(betas=(0.0, 0.9), eps=1e-3))
    fused.eps_mode, fused.use_fp16_stats = 1, True
    for p in params:
        exp_avg_sq = adam.optimizer.state[p]["exp_avg_sq"]
        scale = 1e-8 + exp_avg_sq.abs().max() / 65504.0  # FusedAdamV1's scale
        fused.state[p] = {
            "step": adam.optimizer.state[p]["step"],
            "exp_avg": torch.zeros_like(p).half(),
            "exp_avg_sq": (exp_avg_sq / scale).half(),
            "exp_avg_sq_scale": scale,
        }
    state = adam_second_moment(fused, params)
    for moment, p in zip(state[0], params):
        assert moment.dtype != torch.float16
        torch.testing.assert_close(moment.double(), adam.optimizer.state[p]["exp_avg_sq"],
                                   rtol=1e-3, atol=0)  # fmt: skip
    preconditioned = adam_preconditioned(grads, *state)
    ratio = torch.cat([(c / g).view(-1) for c, g in zip(change, preconditioned)])
    torch.testing.assert_close(ratio, torch.full_like(ratio, -1e-4), rtol=1e-3, atol=0)


def test_step_count_kept_in_the_parameter_group():
    """apex's FusedAdam counts steps per group, not in the state; it adds eps to sqrt(v_hat)
    like torch's Adam (state copied from a real torch Adam step)."""
    params, adam, grads, change = stepped(OPTIMISERS["torch"])

    class FusedAdam(torch.optim.Optimizer):
        __module__ = "apex.optimizers.fused_adam"

    fused = FusedAdam(params, dict(betas=(0.0, 0.9), eps=1e-3, bias_correction=True))
    fused.param_groups[0]["step"] = 2
    for p in params:
        fused.state[p] = {k: v for k, v in adam.state[p].items() if k != "step"}
    adam.state[params[1]]["step"] = torch.tensor(2.0)  # as apex counts it for the bias
    state = adam_second_moment(fused, params)
    assert state[1] == [2.0, 2.0]
    expected = adam_preconditioned(grads, *adam_second_moment(adam, params))
    for got, want in zip(adam_preconditioned(grads, *state), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_parameter_without_state_gets_a_zero_component():
    """A parameter that never had a gradient has no Adam state; the others stay
    preconditioned (not: the preconditioner off for everything)."""
    params, optimizer, grads, change = stepped(OPTIMISERS["fairseq"])
    unused = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    optimizer.optimizer.add_param_group({"params": [unused]})
    state = adam_second_moment(optimizer, params + [unused])
    preconditioned = adam_preconditioned(grads + [torch.ones(5, dtype=torch.float64)], *state)
    assert torch.equal(preconditioned[2], torch.zeros(5, dtype=torch.float64))
    assert_step_direction(preconditioned[:2], change)


def test_fused_adam_settings_fairseq_never_uses_are_refused():
    """eps inside the square root, no bias correction, a state without a step count."""
    params, adam, _, _ = stepped(OPTIMISERS["fairseq"])
    fused = FusedAdamV1.__new__(FusedAdamV1)  # its constructor needs the CUDA extension
    torch.optim.Optimizer.__init__(fused, params, dict(betas=(0.0, 0.9), eps=1e-3))
    fused.state.update({p: dict(adam.optimizer.state[p]) for p in params})
    fused.eps_mode = 0
    with pytest.raises(GGLMUserError, match="eps_inside_sqrt"):
        adam_second_moment(fused, params)
    fused.eps_mode = 1
    fused.param_groups[0]["bias_correction"] = False
    with pytest.raises(GGLMUserError, match="bias correction"):
        adam_second_moment(fused, params)
    fused.param_groups[0]["bias_correction"] = True
    del fused.state[params[0]]["step"]
    with pytest.raises(GGLMUserError, match="no step count"):
        adam_second_moment(fused, params)


def test_no_second_moment_before_the_first_step_and_errors():
    param = torch.nn.Parameter(torch.randn(3))
    assert adam_second_moment(torch.optim.Adam([param]), [param]) is None
    with pytest.raises(GGLMUserError, match="needs an Adam optimiser"):
        adam_second_moment(torch.optim.SGD([param], lr=0.1), [param])
    # Betas and eps, but not Adam's step (it keeps no exp_avg_sq): not silently unpreconditioned.
    with pytest.raises(GGLMUserError, match="needs an Adam optimiser"):
        adam_second_moment(Adamax([param]), [param])
    two_groups = torch.optim.Adam([{"params": [param]}, {"params": [], "eps": 1e-6}])
    with pytest.raises(GGLMUserError, match="one beta2 and eps"):
        adam_second_moment(two_groups, [param])
    other = torch.nn.Parameter(torch.randn(4))
    adam = torch.optim.Adam([other])
    other.grad = torch.ones(4)
    adam.step()
    with pytest.raises(GGLMUserError, match="one to one"):
        adam_second_moment(adam, [param])
    with pytest.raises(ValueError, match="step >= 1"):
        adam_preconditioned([param], [param], [0], 0.98, 1e-8, True)


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
        # fairseq's Adam: eps on sqrt(v), the bias correction in the step size.
        want = g * (1 - 0.98) ** 0.5 / (adam.state[p]["exp_avg_sq"].sqrt() + 1e-8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


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
