"""The README's demo: end to end on a tiny generated corpus (data, binarisation, GGLM, the
audit, the baseline, generation, BLEU), from a clean clone (no shared data); and its parts."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "experiments" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    sys.path.insert(0, str(DEMO.parent))  # demo.py imports common.py from its folder
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(DEMO), "--work", str(tmp_path), "--train", "300", "--clean", "40",
         "--test", "50", "--updates", "3", "--vocab", "20", "--controls"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    systems = {"baseline", "gglm", "oracle-mask", "random-mask"}
    assert set(results) == {*systems, "setting"} and results["setting"]["updates"] == 3
    for name in systems:
        entry = results[name]
        assert 0.0 <= entry["bleu"] <= 100.0 and entry["bleu_signature"].startswith("nrefs:1")
        assert 0.0 <= entry["copied"] <= 1.0 and 0.0 <= entry["third_language"] <= 1.0
    assert 0.0 <= results["gglm"]["detection_auc"]["all"] <= 1.0
    out = result.stdout
    # The audit comes first: gglm-report's output, the top of ranked.tsv, then the BLEU table.
    assert out.index("ROC-AUC of mask rate, noisy") < out.index("the most masked training pairs")
    assert out.index("the most masked training pairs") < out.index("GGLM - baseline:")
    assert (tmp_path / "report" / "mask_rate_by_label.png").exists()
    assert "1/6 generating" in out and "4/6 baseline" in out and "6/6 random-mask" in out
    assert "controls (GGLM's pipeline" in out
    assert "Neither system translates well yet" in out  # 3 updates
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_progress_reports_updates_and_time_left(demo, capsys, monkeypatch):
    clock = iter([0.0, 10.0, 30.0, 50.0])
    monkeypatch.setattr(demo.time, "time", lambda: next(clock))
    progress = demo.Progress("gglm", total=100, every=0.0)
    progress("no updates in this line")
    progress("epoch 001: 10 / 36 loss=5.1, num_updates=10, lr=0.001")  # start of the rate
    progress("epoch 001: 30 / 36 loss=4.9, num_updates=30, lr=0.001")
    out = capsys.readouterr().out
    # 20 updates in 20 s: 70 updates left take 70 s.
    assert "gglm: update 30/100, 30 s so far, about 70 s left" in out


def test_toy_target_words_have_synonyms_at_the_given_rate(demo):
    _, targets, _ = demo.toy_corpus(2000, 30, 0.2, random.Random(0))
    words = " ".join(targets).split()
    assert abs(sum(w.startswith("u") for w in words) / len(words) - 0.2) < 0.02
    _, deterministic, _ = demo.toy_corpus(50, 30, 0.0, random.Random(0))
    assert all(w.startswith("t") for line in deterministic for w in line.split())


def test_output_shares_count_copies_and_third_language(demo):
    sources = ["s1 s2", "s3 s4", "s5 s6", "s7 s8"]
    hypotheses = ["s1 s2", "f1 f2 t3", "t1 t2", "f3 t4"]
    assert demo.output_shares(hypotheses, sources) == {"copied": 0.25, "third_language": 0.25}


def test_verdict_says_won_lost_or_no_difference_and_whether_they_translate(demo):
    assert demo.verdict(20.0, 22.0).startswith("GGLM wins here")
    assert demo.verdict(20.0, 18.0).startswith("GGLM LOSES")
    assert demo.verdict(20.0, 20.5).startswith("No difference beyond 1 BLEU")
    assert "Neither system translates well yet" not in demo.verdict(20.0, 22.0)
    assert demo.verdict(9.29, 1.89).startswith("GGLM LOSES")
    assert "Neither system translates well yet" in demo.verdict(9.29, 1.89)
