"""The alignment probe's parameter groups: a partition, and additive alignments."""

import sys
from pathlib import Path

import torch
from helpers import tiny_transformer
from test_engines import assert_close, make_batch, random_direction, token_loss_fn

from gglm_fairseq.alignment import get_engine, restricted, trainable_parameter_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "experiments"))
from alignment_probe import parameter_groups  # noqa: E402


def test_groups_partition_the_parameters_and_their_alignments_add_up():
    model, dictionary = tiny_transformer(share_all_embeddings=True)
    groups = parameter_groups(model)
    names = trainable_parameter_names(model)
    # Every trainable parameter in exactly one group; the tied embedding among "embeddings".
    assert [sum(member) for member in zip(*groups.values())] == [1] * len(names)
    assert groups["embeddings"][names.index("encoder.embed_tokens.weight")]
    assert any(groups["cross-attention"]) and not any(groups["rest"])

    batch = make_batch(dictionary)
    direction = random_direction(model)
    engine, loss = get_engine("jvp"), token_loss_fn(dictionary.pad())
    model.eval()
    full = engine(model, loss, batch, direction).alignment
    parts = torch.zeros_like(full)
    for member in groups.values():
        parts += engine(model, loss, batch, restricted(direction, member)).alignment
    assert_close(parts, full)
