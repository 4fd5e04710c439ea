"""The README's option table is the one the code generates."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_option_table_is_current():
    path = ROOT / "scripts" / "options_table.py"
    spec = importlib.util.spec_from_file_location("options_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- options-table:start -->") + len("<!-- options-table:start -->")
    end = readme.index("<!-- options-table:end -->")
    assert readme[start:end].strip() == module.table().strip(), (
        "README option table is stale: paste the output of python scripts/options_table.py"
    )
