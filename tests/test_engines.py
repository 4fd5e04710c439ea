"""Every engine against the per-example loop, on a real fairseq transformer."""

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from helpers import tiny_transformer

from gglm_fairseq.alignment import (
    ENGINES,
    get_engine,
    gradient,
    loop_aligned_loss,
    substituted_parameters,
    trainable_parameters,
    unfused_attention,
)

FAST_ENGINES = [name for name in ENGINES if name != "loop"]


def make_batch(dictionary, seed: int = 1, rows: int = 5):
    generator = torch.Generator().manual_seed(seed)
    pad, eos = dictionary.pad(), dictionary.eos()
    src = torch.randint(4, len(dictionary), (rows, 7), generator=generator)
    src[0, :3] = pad  # left padding
    tgt = torch.randint(4, len(dictionary), (rows, 6), generator=generator)
    tgt[1, -2:] = pad  # right padding
    prev = torch.cat([torch.full((rows, 1), eos), tgt[:, :-1]], dim=1)
    return {
        "net_input": {
            "src_tokens": src,
            "src_lengths": src.ne(pad).sum(1),
            "prev_output_tokens": prev,
        },
        "target": tgt,
    }


def token_loss_fn(pad: int):
    def token_loss(model, batch):
        net_output = model(**batch["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        loss, _ = label_smoothed_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), batch["target"].view(-1), 0.1,
            ignore_index=pad, reduce=False,
        )  # fmt: skip
        return loss.view(batch["target"].shape), None

    return token_loss


def random_direction(model, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in trainable_parameters(model)]


def assert_close(actual, expected, rtol=1e-4):
    """Relative to the overall scale: single entries may be tiny (design notes)."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() / scale < rtol, (actual, expected)


def run(engine, model, dictionary, granularity, seed=5, **kwargs):
    torch.manual_seed(seed)  # the same dropout noise for every engine
    batch = make_batch(dictionary)
    return get_engine(engine)(
        model, token_loss_fn(dictionary.pad()), batch, random_direction(model),
        granularity=granularity, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared-embeddings"])
@pytest.mark.parametrize("granularity", ["sentence", "token"])
@pytest.mark.parametrize("engine", FAST_ENGINES)
def test_engine_equals_loop(engine, granularity, shared):
    model, dictionary = tiny_transformer(share_all_embeddings=shared)
    model.eval()
    expected = run("loop", model, dictionary, granularity)
    actual = run(engine, model, dictionary, granularity)
    assert actual.alignment.shape == expected.alignment.shape
    assert_close(actual.alignment, expected.alignment)
    assert torch.equal(torch.sign(actual.alignment), torch.sign(expected.alignment))
    assert torch.allclose(actual.token_losses, expected.token_losses, atol=1e-5)


@pytest.mark.parametrize("engine", FAST_ENGINES)
def test_dropout_mask_judges_the_noise_of_its_loss(engine):
    """With dropout on, the alignment and the returned loss come from the same noise:
    every engine reproduces the loop, whose alignments and loss share one forward."""
    model, dictionary = tiny_transformer(share_all_embeddings=True, dropout=0.3)
    model.train()
    # ghost always takes fairseq's explicit attention path, whose dropout draws its numbers
    # in another order than the fused kernel's: every engine runs on that path here.
    with unfused_attention(model):
        expected = run("loop", model, dictionary, "sentence")
        actual = run(engine, model, dictionary, "sentence")
        other_noise = run("loop", model, dictionary, "sentence", seed=6)
    assert_close(actual.alignment, expected.alignment)
    assert torch.allclose(actual.token_losses, expected.token_losses, atol=1e-5)
    assert not torch.allclose(other_noise.token_losses, expected.token_losses)


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_keeps_parameters_and_ties(engine):
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    before = [id(p) for p in trainable_parameters(model)]
    named_before = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    run(engine, model, dictionary, "sentence")
    assert [id(p) for p in trainable_parameters(model)] == before
    named_after = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    assert named_after == named_before
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())


@pytest.mark.parametrize("engine", ENGINES)
def test_token_alignments_sum_to_sentence_alignment(engine):
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    model.eval()
    sentence = run(engine, model, dictionary, "sentence")
    token = run(engine, model, dictionary, "token")
    assert_close(token.alignment.sum(dim=1), sentence.alignment)
    pad_positions = make_batch(dictionary)["target"].eq(dictionary.pad())
    assert token.alignment[pad_positions].abs().max() < 1e-6


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared-embeddings"])
@pytest.mark.parametrize("granularity", ["sentence", "token"])
@pytest.mark.parametrize("engine", FAST_ENGINES)
def test_masked_loss_gradient_equals_loop(engine, granularity, shared):
    """The masked loss's backward gives the parameter gradients of sum_i m_i l_i (ghost
    computes them itself, from the recorded inputs and output gradients, with the mask)."""
    model, dictionary = tiny_transformer(share_all_embeddings=shared, dropout=0.2)
    model.train()
    params = trainable_parameters(model)

    def masked_gradients(name):
        aligned = run(name, model, dictionary, granularity)
        mask = (aligned.alignment > 0).float()
        model.zero_grad()
        aligned.masked_loss(mask).backward()
        return mask, [p.grad.clone() if p.grad is not None else None for p in params]

    with unfused_attention(model):
        mask, expected = masked_gradients("loop")
        actual_mask, actual = masked_gradients(engine)
    assert torch.equal(mask, actual_mask) and 0 < mask.mean() < 1
    scale = max(g.abs().max() for g in expected if g is not None)
    for got, want in zip(actual, expected):
        assert (got is None) == (want is None)
        if want is not None:
            assert (got - want).abs().max() / scale < 1e-5


def naive_weighted_gradients(model, dictionary, weights):
    """sum_i of grad (w_i * l_i), one forward and backward per example (w_i a number, or
    one per target token)."""
    params = trainable_parameters(model)
    total = [torch.zeros_like(p) for p in params]
    for i in range(weights.shape[0]):
        losses, _ = token_loss_fn(dictionary.pad())(model, make_batch(dictionary))
        grads = gradient((losses[i] * weights[i]).sum(), params)
        total = [t + g for t, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("granularity", ["sentence", "token"])
@pytest.mark.parametrize("engine", ENGINES)
def test_weighted_loss_gradient_equals_a_naive_loop(engine, granularity):
    """masked_loss takes any weights, not only a 0/1 mask (--gglm-weighting soft): every
    engine's backward gives sum_i w_i grad l_i, ghost's own weight gradients included."""
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()  # the naive loop's forwards must repeat the engine's
    aligned = run(engine, model, dictionary, granularity)
    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(aligned.alignment.shape, generator=generator) * 3
    weights.view(-1)[::3] = 0.0
    model.zero_grad()
    aligned.masked_loss(weights).backward()
    params = trainable_parameters(model)
    actual = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    expected = naive_weighted_gradients(model, dictionary, weights)
    binarised = naive_weighted_gradients(model, dictionary, (weights > 0).float())
    scale = max(g.abs().max() for g in expected)
    assert max((a - e).abs().max() for a, e in zip(actual, expected)) / scale < 1e-5
    assert max((b - e).abs().max() for b, e in zip(binarised, expected)) / scale > 1e-2


def test_vmap_gradient_norms_equal_loop():
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()
    expected = run("loop", model, dictionary, "sentence", with_norms=True)
    actual = run("vmap", model, dictionary, "sentence", with_norms=True, chunk_size=2)
    assert_close(actual.gradient_norm, expected.gradient_norm)
    assert_close(actual.alignment, expected.alignment)


def test_jvp_refuses_gradient_norms():
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    with pytest.raises(ValueError, match="vmap or loop"):
        run("jvp", model, dictionary, "sentence", with_norms=True)


def test_loop_direction_must_match_parameters():
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    with pytest.raises(ValueError, match="one tensor per trainable parameter"):
        loop_aligned_loss(
            model, token_loss_fn(dictionary.pad()), make_batch(dictionary),
            random_direction(model)[:-1],
        )  # fmt: skip


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown alignment engine 'fast'.*jvp"):
        get_engine("fast")


def test_substitution_restores_on_error():
    model, _ = tiny_transformer(share_all_embeddings=True)
    params = trainable_parameters(model)
    with pytest.raises(RuntimeError, match="boom"):
        with substituted_parameters(model, params, [p.detach() * 2 for p in params]):
            assert not isinstance(model.encoder.embed_tokens.weight, torch.nn.Parameter)
            raise RuntimeError("boom")
    assert [id(p) for p in trainable_parameters(model)] == [id(p) for p in params]
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    assert isinstance(model.encoder.embed_tokens.weight, torch.nn.Parameter)
