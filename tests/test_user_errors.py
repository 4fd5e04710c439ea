"""A user error from the command line (a missing clean split, a bad GGLM option) prints its
message on one line and exits 1, through fairseq-train itself; other errors keep their
traceback, and so does a user error with GGLM_TRACEBACK=1."""

import shutil
import subprocess
import sys

import pytest
from helpers import fairseq_train, train_args

from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.tasks import CleanSetError

pytestmark = pytest.mark.slow


def test_user_errors_are_value_errors_for_library_callers():
    assert issubclass(CleanSetError, GGLMUserError) and issubclass(GGLMUserError, ValueError)


def test_missing_clean_split_is_one_line_and_exit_1(data_bin, tmp_path):
    data = shutil.copytree(data_bin, tmp_path / "bin", ignore=shutil.ignore_patterns("clean.*"))
    result = fairseq_train(train_args(data, tmp_path / "ckpt", "--max-update", "1"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("fairseq-train: error: clean split not found: ")
    assert str(data / "clean.src-tgt.src") in lines[0]


def test_bad_gglm_option_is_one_line_and_exit_1(data_bin, tmp_path):
    argv = train_args(
        data_bin, tmp_path / "ckpt", "--max-update", "1", "--gglm-warmup-updates", "-1"
    )
    result = fairseq_train(argv)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fairseq-train: error: --gglm-warmup-updates must be >= 0"
    ], result.stderr[-3000:]
    # The traceback, for a bug report.
    traced = fairseq_train(argv, GGLM_TRACEBACK="1")
    assert traced.returncode == 1 and "Traceback (most recent call last)" in traced.stderr
    assert traced.stderr.strip().splitlines()[-1].endswith("--gglm-warmup-updates must be >= 0")


def test_other_errors_keep_their_traceback():
    result = subprocess.run(
        [sys.executable, "-c", "import gglm_fairseq; raise RuntimeError('a bug')"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "RuntimeError: a bug"
