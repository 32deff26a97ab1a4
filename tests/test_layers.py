"""Imports go one way: sharding -> runtime -> snapshots -> journal (read statically, so a lazy
import inside a function counts too). journal/ and snapshots/ know nothing of Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"journal": 0, "snapshots": 1, "runtime": 2, "sharding": 3}
RAY_FREE = {"journal", "snapshots"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(RANK))
def test_imports_only_go_down(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top in _imports(path):
            if top in RANK and RANK[top] > RANK[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {top}")
            if package in RAY_FREE and top == "ray":
                bad.append(f"{path.relative_to(ROOT)} imports ray")
    assert not bad, bad


def test_domain_api_is_plain_python() -> None:
    imports = _imports(ROOT / "runtime" / "aggregate.py")
    assert not imports & {"ray", "cassandra", "cloudpickle"}, imports
