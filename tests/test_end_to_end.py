"""The README's workflow with the real command-line tools, in subprocesses:
fairseq-preprocess (with a clean split), fairseq-train with the plugin, stop, resume,
fairseq-generate with --user-dir, and sacrebleu."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, write_corpus

from gglm_fairseq.cli import user_dir
from gglm_fairseq.record import RECORD_FILE, ExampleRecord

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(*command: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_preprocess_train_resume_generate_score(tmp_path):
    text = tmp_path / "text"
    write_corpus(text, {"train": 600, "valid": 40, "test": 40, "clean": 60}, noise=0.3)
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", "text/train", "--validpref", "text/valid,text/clean",
        "--testpref", "text/test", "--destdir", "bin", "--workers", "1", cwd=tmp_path)
    for path in (tmp_path / "bin").glob("valid1.*"):
        path.rename(path.with_name(path.name.replace("valid1", "clean", 1)))

    train = [
        "fairseq-train", "bin", "--user-dir", user_dir(),
        "--task", "translation_with_clean_set", "--clean-subset", "clean",
        "--criterion", "gradient_masked_cross_entropy", "--label-smoothing", "0.1",
        *TINY_MODEL, "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "1000",
        "--clean-max-tokens", "300", "--cpu", "--seed", "1", "--save-dir", "ckpt",
        "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "10",
    ]  # fmt: skip
    first = run(*train, "--max-update", "30", cwd=tmp_path)
    assert "gglm_masked_sent" in first
    record = ExampleRecord.load(str(tmp_path / "ckpt" / RECORD_FILE))
    assert record.update_num == 29

    resumed = run(*train, "--max-update", "60", cwd=tmp_path)
    assert re.search(r"Loaded checkpoint ckpt/checkpoint_last\.pt \(epoch \d+ @ 30 updates\)",
                     resumed)  # fmt: skip
    assert "restored the record and the clean-gradient state of update 30" in resumed
    record = ExampleRecord.load(str(tmp_path / "ckpt" / RECORD_FILE))
    assert record.update_num == 59 and len(record.history) == 60

    generated = run(
        "fairseq-generate", "bin", "--user-dir", user_dir(),
        "--task", "translation_with_clean_set", "--path", "ckpt/checkpoint_last.pt",
        "--gen-subset", "test", "--beam", "2", "--batch-size", "64", "--cpu", cwd=tmp_path,
    )  # fmt: skip
    hypotheses = {}
    for line in generated.splitlines():
        if line.startswith("H-"):
            index, _, hypothesis = line[2:].split("\t")
            hypotheses[int(index)] = hypothesis
    assert len(hypotheses) == 40
    (tmp_path / "hyp.txt").write_text("".join(hypotheses[i] + "\n" for i in range(40)))
    score = run("sacrebleu", "text/test.tgt", "-i", "hyp.txt", "-m", "bleu", "-b", cwd=tmp_path)
    assert float(score.strip().splitlines()[-1]) >= 0.0
