"""The clean split: loading, checks with clear errors, and the endless clean batches."""

import shutil
from dataclasses import replace

import pytest
import torch
from helpers import binarize, build, train_args, write_corpus

from gglm_fairseq.clean_gradient import CleanGradientEstimator
from gglm_fairseq.tasks import CleanSetError


@pytest.fixture()
def built(data_bin, tmp_path):
    return build(train_args(data_bin, tmp_path / "ckpt", "--clean-batch-size", "8"))


def ids(batch):
    return batch["id"].tolist()


def test_clean_split_loaded_with_training_data(built):
    task, _, _ = built
    assert len(task.datasets["clean"]) == 40
    assert len(task.datasets["train"]) == 240


def test_clean_batches_are_endless_reshuffled_and_deterministic(built, data_bin, tmp_path):
    task, model, _ = built
    batches = task.clean_batch_iterators(model)
    n = batches.batches_per_epoch
    assert n >= 5  # 40 sentences, at most 8 a batch
    sequence = [ids(batches.batch(i)) for i in range(3 * n + 2)]
    epochs = [sorted(sum(sequence[e * n : (e + 1) * n], [])) for e in range(3)]
    assert epochs[0] == epochs[1] == epochs[2] == list(range(40))  # each epoch covers all
    assert sequence[:n] != sequence[n : 2 * n]  # reshuffled between epochs
    assert all(len(b) <= 8 for b in sequence)

    task2, model2, _ = build(train_args(data_bin, tmp_path / "other", "--clean-batch-size", "8"))
    again = task2.clean_batch_iterators(model2)
    # Random access (a resume at update k) gives exactly the sequential batches.
    for index in [2 * n + 1, 0, n - 1, n, 3 * n + 1]:
        assert ids(again.batch(index)) == sequence[index]


def test_seed_changes_the_clean_order(built, data_bin, tmp_path):
    task, model, _ = built
    first = [ids(task.clean_batch_iterators(model).batch(i)) for i in range(4)]
    task2, model2, _ = build(
        train_args(data_bin, tmp_path / "s", "--clean-batch-size", "8") + ["--seed", "11"]
    )
    second = [ids(task2.clean_batch_iterators(model2).batch(i)) for i in range(4)]
    assert first != second


def test_clean_gradient_is_cached_per_update_and_interval(built):
    task, model, criterion = built
    first = task.clean_gradient(model, criterion, 0)
    assert task.clean_gradient(model, criterion, 0) is first  # an AMP re-run reuses it
    second = task.clean_gradient(model, criterion, 1)
    assert second is not first and second.update_num == 1
    assert any(not torch.equal(a, b) for a, b in zip(first.direction, second.direction))
    task.estimator = CleanGradientEstimator(replace(task.estimator.settings, interval=4))
    fourth = task.clean_gradient(model, criterion, 4)
    assert task.clean_gradient(model, criterion, 7) is fourth
    assert task.clean_gradient(model, criterion, 8) is not fourth


def test_clean_gradient_equals_mean_token_loss_gradient(built):
    task, model, criterion = built
    clean = task.clean_gradient(model, criterion, 0)
    batch = task.clean_batch_iterators(model).batch(0)
    model.eval()
    losses, _ = criterion.token_losses(model, batch)
    loss = losses.sum() / batch["ntokens"]
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for got, want in zip(clean.direction, expected):
        assert torch.allclose(got, want, atol=1e-6)
    assert clean.loss == pytest.approx(loss.item(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_non_finite_clean_gradient_trains_unmasked(built, caplog):
    task, model, criterion = built
    original = criterion.token_losses

    def infinite(model, sample):
        losses, extras = original(model, sample)
        return losses * float("inf"), extras

    criterion.token_losses = infinite
    clean = task.clean_gradient(model, criterion, 0)
    assert clean.direction is None
    assert "non-finite clean gradient" in caplog.text


def test_missing_clean_split(data_bin, tmp_path):
    data = shutil.copytree(data_bin, tmp_path / "bin")
    for path in data.glob("clean.*"):
        path.unlink()
    with pytest.raises(CleanSetError, match=r"clean split not found: .*clean\.src-tgt\.src\.bin"):
        build(train_args(data, tmp_path / "ckpt"))


def test_other_clean_subset_name(data_bin, tmp_path):
    data = shutil.copytree(data_bin, tmp_path / "bin")
    for path in data.glob("clean.*"):
        path.rename(data / path.name.replace("clean", "trusted"))
    task, _, _ = build(train_args(data, tmp_path / "ckpt", "--clean-subset", "trusted"))
    assert len(task.datasets["trusted"]) == 40


def test_empty_clean_split(tmp_path):
    text = tmp_path / "text"
    write_corpus(text, {"train": 50, "valid": 10, "test": 10, "clean": 0})
    binarize(text, tmp_path / "bin")
    with pytest.raises(CleanSetError, match=r"clean split is empty: .*clean\.src-tgt\.src\.bin"):
        build(train_args(tmp_path / "bin", tmp_path / "ckpt"))


def test_clean_split_with_another_dictionary(data_bin, tmp_path):
    # The clean split binarised on its own: its own dictionaries, in its own directory.
    text = tmp_path / "text"
    write_corpus(text, {"train": 20, "valid": 5, "test": 5, "clean": 5}, seed=9)
    for split in ("train", "valid"):  # a clean set with words the training data lacks
        for lang in ("src", "tgt"):
            path = text / f"{split}.{lang}"
            path.write_text(path.read_text() + f"unseen{lang} extra{lang}\n")
    binarize(text, tmp_path / "clean-bin")
    with pytest.raises(CleanSetError, match=r"dictionary .*clean-bin/dict\.src\.txt differs"):
        build(train_args(data_bin, tmp_path / "ckpt", "--clean-data", str(tmp_path / "clean-bin")))


def test_clean_ids_beyond_the_dictionary(data_bin, tmp_path):
    # Only the binary files copied over, no dictionary to compare: the ids give it away.
    text = tmp_path / "text"
    write_corpus(text, {"train": 20, "valid": 5, "test": 5, "clean": 5}, seed=9)
    extra = [f"x{i}" for i in range(60)]
    (text / "train.src").write_text((text / "train.src").read_text() + " ".join(extra) + "\n")
    (text / "train.tgt").write_text((text / "train.tgt").read_text() + "t1\n")
    (text / "clean.src").write_text(" ".join(extra) + "\n")
    (text / "clean.tgt").write_text("t1 t2\n")
    binarize(text, tmp_path / "big")
    data = shutil.copytree(data_bin, tmp_path / "bin")
    for path in (tmp_path / "big").glob("clean.*"):
        shutil.copy(path, data / path.name)
    with pytest.raises(CleanSetError, match=r"clean\.src-tgt\.src\.bin holds token id \d+"):
        build(train_args(data, tmp_path / "ckpt"))


def test_default_clean_batch_is_a_quarter_of_the_training_batch(data_bin, tmp_path):
    def clean_batch_tokens(max_tokens: str):
        argv = train_args(data_bin, tmp_path / max_tokens)
        at = argv.index("--clean-max-tokens")
        argv = argv[:at] + argv[at + 2:]  # the default
        argv[argv.index("--max-tokens") + 1] = max_tokens
        task, model, _ = build(argv)
        batches = task.clean_batch_iterators(model)
        return [int(batches.batch(k)["ntokens"]) for k in range(batches.batches_per_epoch)]

    quarter = clean_batch_tokens("400")
    assert max(quarter) <= 100 < 2 * max(quarter)
    longest = max(clean_batch_tokens("8"))  # a quarter would hold no pair: one pair each
    assert 0 < longest <= 11  # the corpus's longest target is 9 words + end of sentence


def test_the_clean_gradient_is_averaged_by_default(data_bin, tmp_path):
    task, model, criterion = build(train_args(data_bin, tmp_path / "c", "--dropout", "0"))
    first = [g.clone() for g in task.clean_gradient(model, criterion, 0).direction]
    second = task.clean_gradient(model, criterion, 1).direction
    # Update 1's batch alone.
    task.estimator = CleanGradientEstimator(replace(task.estimator.settings, decay=0.0))
    batch_alone = task.clean_gradient(model, criterion, 1).direction
    for got, old, new in zip(second, first, batch_alone):
        assert torch.allclose(got, 0.75 * old + 0.25 * new, atol=1e-7)
