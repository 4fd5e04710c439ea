"""scripts/bench_record.py on a tiny corpus: it runs, measures every row and cleans up."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    "examples", "bytes per example (arrays)", "record arrays",
    "resident memory added by building the record", "history rows (one epoch)",
    "save(): export written", "load(mmap=True): export mapped",
    "load(): export read and CRC-checked", "state_dict() (copies)", "torch.save(state_dict())",
    "torch.load(weights_only=True) + from_state_dict()", "update() per batch of 50",
    "gather_decisions local part (2 ranks: pack, unpack)",
    "before: all_gather_object pickling (2 ranks)",
]  # fmt: skip


def test_tiny_run_prints_every_row(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "bench_record.py"), "--examples", "5000",
               "--batch-examples", "50", "--updates", "20", "--dir", str(tmp_path / "files"),
               "--out", str(tmp_path / "benchmarks.md")]  # fmt: skip
    (tmp_path / "files").mkdir()
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[:2] == ["| measure | value |", "| --- | --- |"]
    table = dict(line.strip("| ").split(" | ") for line in lines[2:])
    assert list(table) == ROWS
    assert table["examples"] == "5,000"
    assert table["bytes per example (arrays)"] == "24"
    assert table["history rows (one epoch)"].startswith("100 ")  # 5000 / 50 updates
    assert list((tmp_path / "files").iterdir()) == []  # its files are removed
    page = (tmp_path / "benchmarks.md").read_text()
    assert page.startswith("# Benchmarks\n\n## Per-example record at corpus scale\n")
    assert "\n".join(lines) in page


def load_script():
    path = REPO / "scripts" / "bench_record.py"
    spec = importlib.util.spec_from_file_location("bench_record", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_section_is_replaced_in_place_or_appended():
    bench = load_script()
    page = "# Benchmarks\n\n## Time\n\nold times\n"
    first = bench.with_section(page, f"{bench.SECTION}\n\nrun 1\n")
    assert first == page + f"\n{bench.SECTION}\n\nrun 1\n"
    later = first + "\n## Another section\n\nkept\n"
    second = bench.with_section(later, f"{bench.SECTION}\n\nrun 2\n")
    assert second == page + f"\n{bench.SECTION}\n\nrun 2\n\n## Another section\n\nkept\n"
    assert bench.section_in(second) == f"{bench.SECTION}\n\nrun 2\n"
    assert bench.section_in(page) == ""
