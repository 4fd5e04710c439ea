"""setup.py declares the plugin's requirements (never torch or fairseq), and constraints.txt
pins each of them at a version inside those bounds: the version this environment has."""

import ast
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def install_requires() -> List[Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [Requirement(ast.literal_eval(item)) for item in node.value.elts]
    raise AssertionError("setup.py has no install_requires")


def constraints() -> Dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, pinned = line.split("==")
            pins[name.lower()] = pinned
    return pins


def test_requirements_are_pinned_within_bounds_at_the_tested_versions():
    pins = constraints()
    requirements = install_requires()
    assert {r.name for r in requirements}.isdisjoint({"torch", "fairseq", "fairseq-fixed"})
    for requirement in requirements:
        pinned = pins[requirement.name.lower()]
        assert requirement.specifier.contains(pinned), (requirement, pinned)
        assert version(requirement.name) == pinned, (requirement.name, pinned)
