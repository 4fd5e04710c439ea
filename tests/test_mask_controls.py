"""The experiments' mask controls: GGLM's pipeline with the labels' mask or a random one."""

from pathlib import Path

import numpy as np
import pytest
from helpers import train, train_args

from gglm_fairseq.record import RECORD_FILE, ExampleRecord

CONTROLS = str(Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "mask_controls")


def control_args(data_bin, save, *extra):
    argv = train_args(data_bin, save, "--max-update", "8", *extra)
    argv[argv.index("--user-dir") + 1] = CONTROLS
    argv[argv.index("gradient_masked_cross_entropy")] = "gglm_control_masked_cross_entropy"
    return argv


def test_labels_mask_exactly_the_noisy_pairs(data_bin, tmp_path):
    labels = ["misaligned" if i % 3 == 0 else "clean" for i in range(240)]
    (tmp_path / "labels").write_text("".join(f"{label}\n" for label in labels))
    save = tmp_path / "ckpt"
    train(control_args(data_bin, save, "--mask-control", "labels",
                       "--mask-labels", str(tmp_path / "labels")))  # fmt: skip
    record = ExampleRecord.load(str(save / RECORD_FILE))
    seen = record.seen[:240] > 0
    noisy = np.array([label != "clean" for label in labels])
    assert seen.sum() > 100
    rate = record.masked[:240][seen] / record.seen[:240][seen]
    assert (rate == noisy[seen]).all()


def test_random_mask_at_the_given_rate(data_bin, tmp_path):
    save = tmp_path / "ckpt"
    train(control_args(data_bin, save, "--mask-control", "random", "--mask-random-rate", "0.5"))
    history = ExampleRecord.load(str(save / RECORD_FILE)).history
    assert 0.35 < history[:, 2].sum() / history[:, 1].sum() < 0.65


def test_labels_control_needs_a_labels_file(data_bin, tmp_path):
    with pytest.raises(ValueError, match="needs --mask-labels"):
        train(control_args(data_bin, tmp_path / "ckpt", "--mask-control", "labels"))
