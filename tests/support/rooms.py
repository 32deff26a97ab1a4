"""The room list, read from its one source: ``[tool.setuptools.package-dir]`` in pyproject.toml.

Each entry maps a subpackage of the one import root to its folder (``"raysource.journal" =
"journal"``); the facade (``raysource`` itself) lives in ``facade/``. The layer test, the
doctest runner, ``raysource/__init__``'s docstring and the README's layout table all take the
rooms from here or are checked against it (``tests/project/test_rooms.py``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOT_PACKAGE = "raysource"


def package_dir() -> dict[str, str]:
    """``{package: folder}`` for every package of the distribution, as setuptools builds it."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(setup["package-dir"])


def listed_packages() -> list[str]:
    """The ``packages`` list of pyproject (what the wheel contains)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(setup["packages"])


def rooms() -> dict[str, str]:
    """``{room: folder}`` for the top-level rooms (``journal``, ``runtime``, ...): the
    ``raysource.<room>`` packages whose folder sits at the repository root."""
    out = {}
    for package, folder in package_dir().items():
        parts = package.split(".")
        if len(parts) == 2 and "/" not in folder:
            out[parts[1]] = folder
    return out


def facade_folder() -> str:
    """The folder of the ``raysource`` package itself."""
    return package_dir()[ROOT_PACKAGE]


def top_folders() -> dict[str, str]:
    """``{folder: package}`` for every folder at the repository root that holds a package:
    the rooms and the facade (the doctest runner walks these)."""
    return {folder: package for package, folder in package_dir().items() if "/" not in folder}


def parse_source(text: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, tried again on CPython 3.11's spurious ``SystemError: AST constructor
    recursion depth mismatch``: the AST builder's depth counter is per interpreter, so a parse
    in another thread (Ray's and the driver's threads live on in the test process) can upset
    it (python/cpython#106905, fixed in later 3.11 patch releases). A real syntax error is a
    ``SyntaxError`` and is raised at once."""
    for attempt in range(5):
        try:
            return ast.parse(text, filename)
        except SystemError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")
