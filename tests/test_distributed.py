"""Data-parallel training on CPU (gloo, two processes): the clean gradient is all-reduced,
the per-example record gathers both ranks, and a rank whose clean shard is empty copes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import binarize, train_args, write_corpus

from gglm_fairseq.record import RECORD_FILE, ExampleRecord

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_ranks(data: Path, save: Path, *extra: str) -> None:
    port = free_port()
    argv = train_args(data, save, "--max-update", "4", *extra) + [
        "--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
        "--distributed-no-spawn", "--distributed-backend", "gloo", "--device-id", "0",
        "--ddp-backend", "legacy_ddp",
    ]  # fmt: skip
    fairseq_train = str(Path(sys.executable).parent / "fairseq-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ranks = [
        subprocess.Popen([fairseq_train, *argv, "--distributed-rank", str(rank)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs):
        assert rank.returncode == 0, output[-3000:]


def test_two_ranks_record_both_shards(data_bin, tmp_path):
    save = tmp_path / "ckpt"
    train_two_ranks(data_bin, save)
    record = ExampleRecord.load(str(save / RECORD_FILE))
    assert record.history[:, 0].tolist() == [0, 1, 2, 3]
    seen_ids = set(record.seen.nonzero()[0].tolist())
    # Both ranks' halves of each update are in the record kept by rank 0.
    assert record.seen.sum() == record.history[:, 1].sum()
    assert len(seen_ids) > 100


def test_empty_clean_shard(tmp_path):
    text = tmp_path / "text"
    write_corpus(text, {"train": 120, "valid": 10, "test": 10, "clean": 1})
    binarize(text, tmp_path / "bin")
    train_two_ranks(tmp_path / "bin", tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / RECORD_FILE).exists()
