"""The ghost (book-keeping) engine: what only it has to get right. That it equals the loop
on alignments and masked-loss gradients is in test_engines.py with every engine."""

import pytest
import torch
from helpers import tiny_transformer
from test_engines import assert_close, make_batch, random_direction, run, token_loss_fn

from gglm_fairseq.alignment import (
    GhostUnsupportedError,
    ghost_aligned_loss,
    trainable_parameters,
    unsupported_parameters,
)

VARIANTS = {
    "learned-positions": dict(encoder_learned_pos=True, decoder_learned_pos=True),
    "layernorm-embedding-pre-norm": dict(
        layernorm_embedding=True, encoder_normalize_before=True, decoder_normalize_before=True
    ),
    "untied-output": dict(share_decoder_input_output_embed=False),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("granularity", ["sentence", "token"])
def test_ghost_equals_loop_on_other_transformers(variant, granularity):
    model, dictionary = tiny_transformer(share_all_embeddings=False, **VARIANTS[variant])
    model.eval()
    expected = run("loop", model, dictionary, granularity)
    actual = run("ghost", model, dictionary, granularity)
    assert_close(actual.alignment, expected.alignment)


def test_alignments_and_gradients_do_not_depend_on_the_loss_scale():
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    model.eval()
    params = trainable_parameters(model)
    results = []
    for scale in (1.0, 1024.0):
        aligned = run("ghost", model, dictionary, "sentence", loss_scale=scale)
        model.zero_grad()
        # fairseq's fp16 backward multiplies the loss by its scale, as the pass did.
        (aligned.masked_loss((aligned.alignment > 0).float()) * scale).backward()
        results.append((aligned.alignment, [p.grad.clone() / scale for p in params]))
    (first, first_grads), (second, second_grads) = results
    assert torch.equal(first, second)  # a power of two scales exactly
    for a, b in zip(first_grads, second_grads):
        assert torch.equal(a, b)


def test_unsupported_parameter_is_named():
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    layer = model.encoder.layers[0].self_attn
    layer.bias_k = torch.nn.Parameter(torch.zeros(1, 1, 16))
    assert unsupported_parameters(model) == [
        "encoder.layers.0.self_attn.bias_k (MultiheadAttention)"
    ]
    with pytest.raises(GhostUnsupportedError, match=r"self_attn\.bias_k.*--gglm-engine jvp"):
        run("ghost", model, dictionary, "sentence")


def test_a_parameter_used_outside_the_rules_is_refused():
    """A covered parameter that also reaches the loss through another op (here a sum)
    would get no gradient from that use: refused, naming it."""
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    batch = make_batch(dictionary)
    direction = random_direction(model)

    def token_loss(model, batch):
        embedding = model.encoder.embed_tokens.weight
        losses, extras = token_loss_fn(dictionary.pad())(model, batch)
        return losses + 0 * embedding.sum(), extras

    with pytest.raises(GhostUnsupportedError, match="encoder.embed_tokens.weight"):
        ghost_aligned_loss(model, token_loss, batch, direction)


def test_a_batch_axis_that_is_not_unique_is_refused():
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    batch = make_batch(dictionary, rows=7)  # as many sentences as source positions
    with pytest.raises(GhostUnsupportedError, match="no single batch axis of size 7"):
        ghost_aligned_loss(model, token_loss_fn(dictionary.pad()), batch, random_direction(model))


def test_ties_and_parameters_survive():
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    aligned = run("ghost", model, dictionary, "sentence")
    aligned.masked_loss(torch.ones_like(aligned.alignment)).backward()
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    assert all(m.skip_embed_dim_check is False for m in model.modules()
               if hasattr(m, "skip_embed_dim_check"))  # fmt: skip


def test_ignore_grad_zeroes_the_gradients():
    """fairseq's train_step multiplies the loss by 0 in place for a dummy batch."""
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    aligned = run("ghost", model, dictionary, "sentence")
    loss = aligned.masked_loss(torch.ones_like(aligned.alignment))
    loss *= 0
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in trainable_parameters(model))


def test_embedding_with_max_norm_is_refused():
    model, dictionary = tiny_transformer(share_all_embeddings=False)
    model.encoder.embed_tokens.max_norm = 1.0
    with pytest.raises(GhostUnsupportedError, match="max_norm"):
        run("ghost", model, dictionary, "sentence")
