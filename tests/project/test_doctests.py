"""Docs as tests: every ``>>>`` example in a raysource module docstring runs."""

from __future__ import annotations

import doctest
import importlib

import pytest
from rooms import ROOT, top_folders

ROOMS = top_folders()  # {folder: package}, from pyproject's package-dir


def _modules_with_examples() -> list[str]:
    out = []
    for folder, package in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ">>>" not in path.read_text():
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(".".join((package, *parts)))
    return out


def test_there_are_examples_to_run() -> None:
    assert _modules_with_examples()


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    assert result.attempted > 0
