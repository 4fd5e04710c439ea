"""scripts/gpu_check.sh runs its checks end to end (on a CPU here: the same code paths, fp32,
no half-precision training, no benchmark)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_check_on_a_cpu(tmp_path):
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_ARGS="--skip-bench")
    run = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    for engine in ("vmap", "jvp", "ghost"):
        for granularity in ("sentence", "token"):
            assert f"| {engine} | {granularity} | fp32 |" in report
    assert report.count("| fp32 | ghost | 0 | 1.00 |") == 1
    assert "FAIL" not in report
