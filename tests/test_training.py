"""fairseq-train in-process with the plugin: engines agree over updates, one clean batch
per update, exact resume of the clean sequence and of the per-example record."""

import numpy as np
import pytest
import torch
from helpers import load_params, train, train_args

from gglm_fairseq.record import RECORD_FILE, ExampleRecord
from gglm_fairseq.tasks.translation_with_clean_set import CleanBatches

pytestmark = pytest.mark.slow


@pytest.fixture()
def clean_indices(monkeypatch):
    """The clean-batch indices asked for, in order."""
    asked = []
    original = CleanBatches.batch

    def batch(self, index):
        asked.append(index)
        return original(self, index)

    monkeypatch.setattr(CleanBatches, "batch", batch)
    return asked


def test_engines_train_identically_with_shared_embeddings(joined_data_bin, tmp_path):
    results = {}
    for engine in ("loop", "vmap", "jvp", "ghost"):
        save = tmp_path / engine
        train(train_args(joined_data_bin, save, "--share-all-embeddings", "--max-update", "4",
                         "--gglm-engine", engine, "--dropout", "0.1"))  # fmt: skip
        results[engine] = load_params(save / "checkpoint_last.pt")
    reference = results["loop"]
    scale = max(t.abs().max() for t in reference.values())
    for engine in ("vmap", "jvp", "ghost"):
        for name, tensor in reference.items():
            assert (results[engine][name] - tensor).abs().max() / scale < 1e-4, (engine, name)
    # The tie survived training: the shared weights are one tensor in the checkpoint.
    for params in results.values():
        assert torch.equal(
            params["encoder.embed_tokens.weight"], params["decoder.embed_tokens.weight"]
        )
        assert torch.equal(
            params["decoder.embed_tokens.weight"], params["decoder.output_projection.weight"]
        )


def test_ghost_trains_as_jvp_with_gradient_accumulation(data_bin, tmp_path):
    """--update-freq 2: ghost's weight gradients of both micro-batches add up in .grad."""
    results = {}
    for engine in ("jvp", "ghost"):
        save = tmp_path / engine
        train(train_args(data_bin, save, "--update-freq", "2", "--max-update", "4",
                         "--gglm-engine", engine, "--dropout", "0.1"))  # fmt: skip
        results[engine] = load_params(save / "checkpoint_last.pt")
    scale = max(t.abs().max() for t in results["jvp"].values())
    for name, tensor in results["jvp"].items():
        assert (results["ghost"][name] - tensor).abs().max() / scale < 1e-4, name


def test_one_clean_batch_per_update_and_exact_resume(data_bin, tmp_path, clean_indices):
    save = tmp_path / "ckpt"
    train(train_args(data_bin, save, "--update-freq", "2", "--max-update", "6"))
    assert clean_indices == list(range(6))  # once per update, not per micro-batch
    first = ExampleRecord.load(str(save / RECORD_FILE))
    assert first.update_num == 5 and len(first.history) == 6
    seen_first = first.seen.sum()
    assert seen_first == first.history[:, 1].sum() > 0

    clean_indices.clear()
    train(train_args(data_bin, save, "--update-freq", "2", "--max-update", "10"))
    assert clean_indices == [6, 7, 8, 9]  # continues where it would have been
    resumed = ExampleRecord.load(str(save / RECORD_FILE))
    assert resumed.update_num == 9 and len(resumed.history) == 10
    assert resumed.seen.sum() == resumed.history[:, 1].sum() > seen_first
    np.testing.assert_array_equal(resumed.history[:6], first.history)


def test_warmup_and_interval(data_bin, tmp_path, clean_indices):
    save = tmp_path / "ckpt"
    train(train_args(data_bin, save, "--max-update", "7", "--gglm-warmup-updates", "3",
                     "--gglm-interval", "2"))  # fmt: skip
    assert clean_indices == [3, 5]
    record = ExampleRecord.load(str(save / RECORD_FILE))
    assert record.history[:, 0].tolist() == [3, 5]


def test_metrics_reach_the_progress_log(data_bin, tmp_path, caplog):
    caplog.set_level("INFO")
    train(train_args(data_bin, tmp_path / "ckpt", "--max-update", "3"))
    line = next(r.getMessage() for r in caplog.records if "train_inner" in r.name)
    for key in ("gglm_masked_sent", "gglm_masked_tok", "gglm_clean_loss", "gglm_align_mean",
                "gglm_align_min", "gglm_align_max", "masked_loss"):  # fmt: skip
        assert key in line, (key, line)
