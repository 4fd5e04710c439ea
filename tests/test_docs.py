"""The README matches the code: its option table is the generated one, and every command in
its ``bash`` blocks is run, here on a tiny corpus or by the test or CI step named for it."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from helpers import TINY_MODEL, write_corpus

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Commands that need more than a test may run here (set-up, the test suite itself, training of
# real size), by their first words: the file that runs them, and what it runs them as.
COVERED_ELSEWHERE = {
    "bash scripts/setup.sh": (".ci/run", "bash scripts/setup.sh"),
    "ruff check .": (".ci/run", "ruff check ."),
    "python -m pytest -q": (".ci/run", "python -m pytest -q"),
    "python scripts/experiments/demo.py": ("tests/test_demo.py", '"experiments" / "demo.py"'),
    "pip install .": ("scripts/check_wheel_install.sh", "-m pip install"),
    "scripts/wmt/run.sh": ("tests/test_wmt_scripts.py", '"scripts" / "wmt" / "run.sh"'),
}
# Appended to the README's fairseq commands here: a tiny model and a couple of updates on CPU
# (fairseq's parser lets a later flag override an earlier one).
SMOKE = {
    "fairseq-train": [*TINY_MODEL, "--max-update", "2", "--cpu", "--num-workers", "0",
                      "--max-tokens", "400", "--clean-max-tokens", "150"],
    "fairseq-generate": ["--cpu", "--num-workers", "0"],
}  # fmt: skip


def readme_commands() -> List[str]:
    """Each command of the README's ``bash`` blocks: continuation lines joined, comments and
    the ``&& . .venv/bin/activate`` tail dropped, ``a && b`` split in two."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", "", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if line.startswith("for ") or line.startswith("grep "):
                commands.append(line)  # one shell line, run as it is
            elif line:
                commands += [part.strip() for part in line.split(" && ")]
    return [c for c in commands if c != ". .venv/bin/activate"]


def covered_elsewhere(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in COVERED_ELSEWHERE)


def test_readme_option_table_is_current():
    path = ROOT / "scripts" / "options_table.py"
    spec = importlib.util.spec_from_file_location("options_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = README.index("<!-- options-table:start -->") + len("<!-- options-table:start -->")
    end = README.index("<!-- options-table:end -->")
    assert README[start:end].strip() == module.table().strip(), (
        "README option table is stale: paste the output of python scripts/options_table.py"
    )


def test_commands_covered_elsewhere_are_run_there():
    for prefix, (path, needle) in COVERED_ELSEWHERE.items():
        assert any(c.startswith(prefix) for c in readme_commands()), f"{prefix} left the README"
        assert needle in (ROOT / path).read_text(), (prefix, path)


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """The README's data, training, generation, scoring and report commands, as written
    (plus the tiny-model flags of SMOKE), in one shell on a tiny en/de/fr corpus."""
    write_corpus(tmp_path / "spm", {"train": 200, "valid": 20, "clean": 30, "test": 20})
    for path in (tmp_path / "spm").iterdir():
        path.rename(path.with_suffix({".src": ".en", ".tgt": ".de"}[path.suffix]))
    train = (tmp_path / "spm" / "train.en").read_text()
    (tmp_path / "train.en").write_text(train)
    (tmp_path / "train.de").write_text((tmp_path / "spm" / "train.de").read_text())
    (tmp_path / "train.fr").write_text(train.replace("s", "f"))
    (tmp_path / "train.labels").write_text("clean\n" * 150 + "misaligned\n" * 50)
    (tmp_path / "ref.de").write_text((tmp_path / "spm" / "test.de").read_text())

    script, seen = ["set -euo pipefail"], set()
    for command in readme_commands():
        if covered_elsewhere(command) or command in seen:
            continue
        seen.add(command)
        program = command.split()[0]
        script.append(" ".join([command, *SMOKE.get(program, [])]))
    programs = {line.split()[0] for line in script[1:]}
    assert {"fairseq-preprocess", "fairseq-train", "fairseq-generate", "gglm-report",
            "gglm-noise"} <= programs, programs  # fmt: skip
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, "\n".join(script) + (result.stdout + result.stderr)[-4000:]
    assert (tmp_path / "report" / "ranked.tsv").exists()
    assert (tmp_path / "noisy.labels").exists() and (tmp_path / "hyp.txt").exists()
    assert '"name": "BLEU"' in result.stdout, result.stdout[-2000:]  # sacrebleu JSON
