"""The README's demo end to end on a tiny generated corpus: data, binarisation, the four
systems, generation, BLEU and the detection AUC, from a clean clone (no shared data)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiments" / "demo.py"), "--work",
         str(tmp_path), "--train", "300", "--clean", "40", "--updates", "3", "--vocab", "20"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"baseline", "gglm", "oracle-mask", "random-mask"}
    for entry in results.values():
        assert 0.0 <= entry["bleu"] <= 100.0 and entry["bleu_signature"].startswith("nrefs:1")
    assert 0.0 <= results["gglm"]["detection_auc"]["all"] <= 1.0
    assert "GGLM - baseline:" in result.stdout and "controls (GGLM's pipeline" in result.stdout
