"""GGLM's state through fairseq's own paths: resume (mid-interval, from an older checkpoint,
from crash.pt), updates fairseq discards, pre-emption by kill -9, and bad training input.
Each case is listed in docs/reliability.md."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fairseq.trainer import Trainer
from helpers import load_params, train, train_args

from gglm_fairseq.record import RECORD_FILE, ExampleRecord
from gglm_fairseq.tasks.translation_with_clean_set import STATE_KEY, load_task_state

pytestmark = pytest.mark.slow
AVERAGED = ("--gglm-clean-grad-ema", "0.75", "--gglm-clean-grad-interval", "2", "--dropout", "0.1")


def assert_same_run(a, b):
    """Same parameters and the same GGLM state (record and clean-gradient average)."""
    params_a, params_b = (
        load_params(a / "checkpoint_last.pt"),
        load_params(b / "checkpoint_last.pt"),
    )
    for name, tensor in params_a.items():
        assert torch.equal(tensor, params_b[name]), name
    state_a = load_task_state(str(a / "checkpoint_last.pt"))[STATE_KEY]
    state_b = load_task_state(str(b / "checkpoint_last.pt"))[STATE_KEY]
    assert state_a["next_update"] == state_b["next_update"]
    for name in ("seen", "masked", "alignment_sum", "alignment_last", "last_update", "history"):
        assert torch.equal(state_a["record"][name], state_b["record"][name]), name
    average_a = state_a["clean_gradient"].get("average", [])
    average_b = state_b["clean_gradient"].get("average", [])
    assert len(average_a) == len(average_b)
    for x, y in zip(average_a, average_b):
        assert torch.equal(x, y)


def test_resume_in_the_middle_of_an_interval_continues_exactly(data_bin, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(train_args(data_bin, whole, *AVERAGED, "--max-update", "7"))
    train(train_args(data_bin, split, *AVERAGED, "--max-update", "3"))  # anchor 2, mid-interval
    train(train_args(data_bin, split, *AVERAGED, "--max-update", "7"))
    assert_same_run(whole, split)


def test_restoring_an_older_checkpoint_rolls_the_state_back(data_bin, tmp_path):
    """--restore-file of a checkpoint older than the last: the record and the average are
    those of that checkpoint, so nothing is counted twice."""
    whole, redo = tmp_path / "whole", tmp_path / "redo"
    train(train_args(data_bin, whole, *AVERAGED, "--max-update", "6"))
    flags = ("--save-interval-updates", "2", "--keep-interval-updates", "-1")
    train(train_args(data_bin, redo, *AVERAGED, *flags, "--max-update", "5"))
    older = next(redo.glob("checkpoint_*_2.pt"))
    train(train_args(data_bin, redo, *AVERAGED, "--max-update", "6", "--restore-file", str(older)))
    assert_same_run(whole, redo)


def test_a_checkpoint_from_another_update_is_refused(data_bin, tmp_path):
    save = tmp_path / "c"
    train(train_args(data_bin, save, "--max-update", "2"))
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    state["task_state"][STATE_KEY]["next_update"] = 5  # as if the record ran ahead
    torch.save(state, save / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="holds GGLM state for update 5 but fairseq resumed"):
        train(train_args(data_bin, save, "--max-update", "4"))


def test_updates_fairseq_discards_are_not_recorded(data_bin, tmp_path, monkeypatch):
    """fairseq skips an update after an OOM in its second micro-batch (and after an fp16
    overflow, whose handler needs CUDA): the first micro-batch's decisions were made, but
    must not be recorded; the next try at the same update is."""
    from gglm_fairseq.criterions import GradientMaskedCrossEntropyCriterion

    tries, calls = [], {"forward": 0}
    original_step = Trainer.train_step
    original_forward = GradientMaskedCrossEntropyCriterion.masked_forward

    def train_step(self, samples, raise_oom=False):
        tries.append([])
        return original_step(self, samples, raise_oom)

    def masked_forward(self, model, sample, clean, *args, **kwargs):
        if not model.training:  # validation
            return original_forward(self, model, sample, clean, *args, **kwargs)
        calls["forward"] += 1
        tries[-1].extend(sample["id"].tolist())
        if calls["forward"] == 6:  # the third try's second micro-batch
            raise RuntimeError("CUDA out of memory (simulated)")
        return original_forward(self, model, sample, clean, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(GradientMaskedCrossEntropyCriterion, "masked_forward", masked_forward)
    save = tmp_path / "c"
    train(train_args(data_bin, save, "--update-freq", "2", "--max-update", "5"))
    assert len(tries) == 6
    applied = np.concatenate([ids for k, ids in enumerate(tries) if k != 2])
    record = ExampleRecord.load(str(save / RECORD_FILE))
    expected = np.bincount(applied, minlength=len(record.seen))
    np.testing.assert_array_equal(record.seen, expected[: len(record.seen)])
    assert record.history[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_a_step_amp_skips_is_not_recorded(data_bin, tmp_path):
    """AMP calls optimizer_step even when its scaler skips the step; the scale it lowers
    tells the task the update was not applied."""
    from fairseq.optim.amp_optimizer import AMPOptimizer
    from helpers import build

    class Scaler:
        scale = 128.0

        def get_scale(self):
            return self.scale

    class SkippingAMP(AMPOptimizer):
        def __init__(self, skip):
            self._grad_scaler, self.skip = Scaler(), skip

        def step(self):
            if self.skip:
                self._grad_scaler.scale /= 2

    task, model, criterion = build(train_args(data_bin, tmp_path / "c"))
    decisions = criterion.masked_forward(
        model, task.dataset("train").collater([task.dataset("train")[i] for i in range(4)]),
        task.clean_gradient(model, criterion, 0),
    )[3]  # fmt: skip
    task._gglm = True
    task._decisions = [decisions]
    task.optimizer_step(SkippingAMP(skip=True), model, 0)
    assert len(task.record) == 0 or task.record.seen.sum() == 0
    task._decisions = [decisions]
    task.optimizer_step(SkippingAMP(skip=False), model, 0)
    assert task.record.seen.sum() == 4


def test_a_crash_checkpoint_does_not_count_its_update(data_bin, tmp_path, monkeypatch):
    """fairseq writes crash.pt when an update's gradients are NaN, after that update's
    forward: its GGLM state must be the one before the update."""
    calls = {"clip": 0}
    original_clip = Trainer.clip_grad_norm

    def clip_grad_norm(self, clip_norm):
        calls["clip"] += 1
        if calls["clip"] == 3:
            raise FloatingPointError("simulated NaN gradients")
        return original_clip(self, clip_norm)

    monkeypatch.setattr(Trainer, "clip_grad_norm", clip_grad_norm)
    save = tmp_path / "c"
    # After writing crash.pt fairseq re-runs the update under its NanDetector, whose hooks
    # fail on torch 2.13 (StopIteration on a dict output) before it re-raises: either ends it.
    with pytest.raises((FloatingPointError, StopIteration)):
        train(train_args(data_bin, save, *AVERAGED, "--max-update", "5"))
    state = load_task_state(str(save / "crash.pt"))[STATE_KEY]
    assert state["next_update"] == 2
    assert int(state["record"]["last_update"].max()) == 1
    assert state["clean_gradient"]["average_anchor"] == 2  # averaged in, reused on resume


def run_until_killed(argv, log, delay):
    """Run until done (True) or kill -9 it ``delay`` seconds after its first update (False)."""
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None and "train_inner" not in log.read_text()[start:]:
            time.sleep(0.01)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return False
    assert process.returncode == 0, log.read_text()[-3000:]
    return True


def test_kill_minus_nine_and_resume_equals_an_uninterrupted_run(data_bin, tmp_path):
    """Pre-emption: kill -9 at seeded random moments after training starts (during updates
    and checkpoint writes) and resume from checkpoint_last.pt until done. Only
    checkpoint_last.pt is written, at every epoch end of 3 updates (fairseq writes it
    atomically); no validation. --rebuild-batches: by default fairseq itself resumes a later
    epoch on other batches than it would have run."""
    fairseq_train = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    flags = (*AVERAGED, "--max-update", "60", "--max-tokens", "900", "--disable-validation",
             "--rebuild-batches")  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([fairseq_train, *train_args(data_bin, whole, *flags)], check=True,
                   capture_output=True)  # fmt: skip
    rng = random.Random(7)
    log = tmp_path / "killed.log"
    argv = [fairseq_train, *train_args(data_bin, killed, *flags)]
    finished = [run_until_killed(argv, log, delay=rng.uniform(0.0, 1.0)) for _ in range(3)]
    assert not all(finished), "the run finished before any kill"
    assert finished[-1] or run_until_killed(argv, log, delay=600)
    assert "restored the record and the clean-gradient state" in log.read_text()
    assert_same_run(whole, killed)


def test_epoch_sharded_data_keys_the_record_by_shard(data_bin, tmp_path):
    """data-bin/a:data-bin/b: each shard restarts example ids; the record puts the second
    shard's examples after the first's."""
    import shutil

    first, second = (
        shutil.copytree(data_bin, tmp_path / "a"),
        shutil.copytree(data_bin, tmp_path / "b"),
    )
    save = tmp_path / "c"
    argv = train_args(data_bin, save, "--max-epoch", "2")
    argv[0] = f"{first}:{second}"
    train(argv)
    record = ExampleRecord.load(str(save / RECORD_FILE))
    size = 240
    assert len(record) >= 2 * size - 10
    assert record.seen[:size].sum() > 0 and record.seen[size : 2 * size].sum() > 0
    assert record.seen.max() == 1  # each example once: an epoch per shard


def test_clean_pairs_longer_than_the_model_are_skipped_or_refused(data_bin, tmp_path, caplog):
    from helpers import build

    from gglm_fairseq.tasks import CleanSetError

    def clean_batches(positions):
        task, model, _ = build(
            train_args(data_bin, tmp_path / positions, "--max-source-positions", positions,
                       "--max-target-positions", positions)
        )  # fmt: skip
        return task.clean_batch_iterators(model)

    clean_batches("8")
    assert "clean pairs are longer than the model's max positions" in caplog.text
    with pytest.raises(CleanSetError, match="all 40 clean pairs are longer"):
        clean_batches("2")


def test_non_finite_alignments_are_masked_and_not_recorded(data_bin, tmp_path, monkeypatch):
    from helpers import build

    task, model, criterion = build(train_args(data_bin, tmp_path / "c", "--dropout", "0"))
    sample = next(
        task.get_batch_iterator(task.dataset("train"), max_tokens=400, seed=1).next_epoch_itr(
            shuffle=False
        )
    )
    original = criterion._aligned_loss

    def with_nan(*args, **kwargs):
        aligned = original(*args, **kwargs)
        aligned.alignment[0] = float("nan")
        return aligned

    monkeypatch.setattr(criterion, "_aligned_loss", with_nan)
    clean = task.clean_gradient(model, criterion, 0)
    _, _, log, decisions = criterion.masked_forward(model.train(), sample, clean)
    assert log["gglm_alignment_nonfinite"] == 1
    assert sample["id"][0] not in decisions.ids and len(decisions.ids) == len(sample["id"]) - 1
    assert torch.isfinite(decisions.alignment).all()
    assert np.isfinite(log["gglm_alignment_sum"])


def test_everything_masked_for_many_updates_warns_once(data_bin, tmp_path, caplog):
    train(train_args(data_bin, tmp_path / "c", "--gglm-threshold", "1e9", "--max-update", "45"))
    assert caplog.text.count("100% of the training examples were masked over the last 20") == 1


@pytest.mark.parametrize("quantile, warned", [(0.95, True), (0.75, False)])
def test_most_examples_masked_warns(data_bin, tmp_path, caplog, quantile, warned):
    """Not everything masked, but nearly (what a clean set from another domain did)."""
    train(train_args(data_bin, tmp_path / "c", "--gglm-threshold-mode", "batch-quantile",
                     "--gglm-threshold-quantile", str(quantile), "--max-update", "25"))  # fmt: skip
    assert ("of the training examples were masked over the last 20" in caplog.text) == warned


def test_training_targets_that_are_empty_lines(tmp_path):
    """An empty target line is binarised as end-of-sentence alone: it trains and is recorded."""
    from helpers import binarize, write_corpus

    text = tmp_path / "text"
    write_corpus(text, {"train": 60, "valid": 10, "test": 10, "clean": 20})
    lines = (text / "train.tgt").read_text().splitlines()
    lines[:5] = [""] * 5
    (text / "train.tgt").write_text("\n".join(lines) + "\n")
    binarize(text, tmp_path / "bin")
    train(train_args(tmp_path / "bin", tmp_path / "c", "--max-update", "3"))
    record = ExampleRecord.load(str(tmp_path / "c" / RECORD_FILE))
    assert record.seen[:5].sum() > 0 and np.isfinite(record.alignment_sum).all()


def test_the_criterion_needs_the_clean_set_task(data_bin, tmp_path):

    argv = train_args(data_bin, tmp_path / "c")
    argv[argv.index("translation_with_clean_set")] = "translation"
    at = argv.index("--clean-max-tokens")
    del argv[at : at + 2]  # an option of the clean-set task
    with pytest.raises(ValueError, match="needs --task translation_with_clean_set"):
        train(argv + ["--max-update", "1"])


def test_only_the_saving_rank_keeps_the_record(data_bin, tmp_path, monkeypatch):
    from helpers import build

    from gglm_fairseq.criterions import Decisions
    from gglm_fairseq.tasks import translation_with_clean_set as module

    task, _, _ = build(train_args(data_bin, tmp_path / "c"))
    decisions = [
        Decisions(torch.tensor([3, 5]), torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]))
    ]
    monkeypatch.setattr(module, "_data_parallel_rank", lambda: 1)
    task._commit(decisions, 0)
    assert task.record.seen.sum() == 0 and task._next_update == 1
    task._running_score = True  # --gglm-score running reads it on every rank
    task._commit(decisions, 1)
    assert task.record.seen.sum() == 2
