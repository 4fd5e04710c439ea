"""Low-precision models (as under --bf16/--fp16): clean gradient and alignments stay fp32.

fairseq trains --bf16 only on CUDA or TPU, so this drives the same code on CPU directly."""

import pytest
import torch
from helpers import build, tiny_transformer, train_args
from test_engines import make_batch, random_direction, run, token_loss_fn

from gglm_fairseq.alignment import get_engine, trainable_parameters


@pytest.mark.parametrize("engine", ["loop", "vmap", "jvp", "ghost"])
def test_engines_on_a_bfloat16_model(engine):
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()
    reference = run(engine, model, dictionary, "sentence").alignment
    model.bfloat16()
    low = run(engine, model, dictionary, "sentence")
    assert low.alignment.dtype == torch.float32
    assert torch.isfinite(low.alignment).all()
    # bf16 keeps ~3 significant digits: the alignments follow the fp32 ones closely.
    assert (low.alignment - reference).abs().max() / reference.abs().max() < 0.1


@pytest.mark.parametrize("engine", ["loop", "vmap", "jvp", "ghost"])
def test_engines_on_a_float16_model_with_a_tiny_direction(engine):
    """A clean gradient of a mean loss over thousands of tokens has entries below fp16's
    smallest subnormal (6e-8): cast to fp16 they would be zeros, and so would the alignments.
    fp16 rounds weights and activations to 2^-11 (5e-4) relative; through the two layers the
    alignments measured 1e-3 to 1.6e-3 of the largest off the fp32 model's; 1e-2 leaves room
    and is far from the all-zero (error 1) a cast direction gives."""
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()
    direction = [1e-9 * d for d in random_direction(model)]

    def alignment():
        return get_engine(engine)(
            model, token_loss_fn(dictionary.pad()), make_batch(dictionary), direction
        ).alignment

    reference = alignment()
    model.half()
    low = alignment()
    assert low.dtype == torch.float32
    assert (low - reference).abs().max() / reference.abs().max() < 1e-2


def test_clean_gradient_and_masked_loss_on_a_bfloat16_model(data_bin, tmp_path):
    task, model, criterion = build(train_args(data_bin, tmp_path / "c", "--dropout", "0"))
    model.bfloat16().train()
    clean = task.clean_gradient(model, criterion, 0)
    assert all(g.dtype == torch.float32 for g in clean.direction)
    sample = next(
        task.get_batch_iterator(task.dataset("train"), max_tokens=400, seed=1)
        .next_epoch_itr(shuffle=False)
    )
    loss, sample_size, log, _ = criterion.masked_forward(model, sample, clean)
    loss.backward()
    assert torch.isfinite(loss) and log["gglm_active"] == 1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ghost_on_a_float16_model_under_loss_scales():
    """As under --fp16: the pass runs at fairseq's loss scale and the alignments do not
    depend on it; when the scaled output gradients overflow, the gradients are non-finite,
    so that fairseq's overflow check skips the update and lowers the scale."""
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()
    reference = run("ghost", model, dictionary, "sentence").alignment
    model.half()
    results = {}
    for scale in (128.0, 1024.0, 2.0**20):
        aligned = run("ghost", model, dictionary, "sentence", loss_scale=scale)
        model.zero_grad()
        (aligned.masked_loss((aligned.alignment > 0).float()) * scale).backward()
        grads = [p.grad for p in trainable_parameters(model) if p.grad is not None]
        results[scale] = (aligned.alignment, all(torch.isfinite(g).all() for g in grads))
    for scale in (128.0, 1024.0):
        alignment, finite = results[scale]
        assert finite and alignment.dtype == torch.float32
        assert (alignment - reference).abs().max() / reference.abs().max() < 0.01
    assert torch.equal(results[128.0][0], results[1024.0][0])
    assert not results[2.0**20][1]  # overflow reaches the gradients: the step is skipped
