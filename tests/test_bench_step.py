"""scripts/bench_step.py --quick runs end to end, fast, and reports every method."""

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_method(tmp_path):
    out = tmp_path / "benchmarks.md"
    record_section = "## Per-example record at corpus scale\n\nmeasured elsewhere\n"
    out.write_text("# an older page\n\n" + record_section)
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-4000:]
    assert elapsed < 180

    text = out.read_text()
    assert text.strip() in run.stdout  # the report is printed as well as written
    assert "an older page" not in text and text.endswith("\n\n" + record_section)
    table = text.split("## Time and peak memory per update")[1].split("## Targets")[0]
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    batch_sizes = 2  # --quick: 4 and 8 sentences
    for name in load_script().method_names():
        matching = [row for row in rows if f"| {name} |" in row]
        assert len(matching) == batch_sizes, name
        for row in matching:
            assert "skipped" not in row, row
            if sys.platform.startswith("linux"):  # the RSS high-water mark can be reset
                assert "n/a" not in row, row
    assert "Command: `python scripts/bench_step.py --quick --out" in text
    assert "load average" in text
    for engine in ("ghost", "jvp"):
        breakdown = text.split(f"## {engine} cost breakdown")[1].split("## ")[0]
        for phase in ("clean pass", "network forward", "backward", "Adam", "sum of phases"):
            assert phase in breakdown, (engine, phase)
    assert "the floor on paper" in text.split("## ghost cost breakdown")[1]
    training = text.split("## fairseq-train")[1].split("## ")[0]
    speeds = re.findall(r"\| ([0-9.]+) \| ([0-9.]+)x \|", training)
    assert len(speeds) == 2 and all(float(ups) > 0 for ups, _ in speeds), training
    assert "GGLM at its shipped defaults <= 1.5x plain" in training
