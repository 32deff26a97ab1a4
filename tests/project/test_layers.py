"""The rooms and the one-way import rule, read statically (a lazy import inside a function
counts too).

    cli  ->  loadtest | ops  ->  examples  ->  service  ->  devnode | testing | data
         ->  sharding | readside  ->  runtime  ->  snapshots | timers  ->  journal

Peers import neither each other: ``sharding`` and ``readside``; ``testing``, ``data`` and
``devnode`` (the dev Cassandra node); ``loadtest`` and ``ops`` (the operator tools). The CLI is on
top and holds argument parsing and printing only; the examples sit above the service room (the
seat service is an example built on it). The storage layers and the entity engine know nothing
of Ray (only ``runtime/actors`` is Ray glue); only the store (``journal/cassandra``), the read
side and the dev node (probing its own node) talk to cassandra-driver.
In ``testing``, only the Ray doubles (``local_resolver``) use Ray; the test kit does not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from rooms import facade_folder, parse_source, rooms

ROOT = Path(__file__).resolve().parents[2]
# every room of pyproject's package-dir (tests/support/rooms.py) with its layer; test_rooms.py
# checks
# that the two name the same rooms
RANK = {
    "journal": 0,
    "snapshots": 1,
    "timers": 1,
    "runtime": 2,
    "readside": 3,
    "sharding": 3,
    "testing": 4,
    "data": 4,
    "devnode": 4,
    "service": 5,
    "examples": 6,
    "loadtest": 7,
    "ops": 7,
    "cli": 8,
}
RAY_FREE = ("journal", "snapshots", "timers", "runtime", "testing")
RAY_GLUE = ("runtime/actors", "testing/local_resolver.py", "testing/span_sink.py")
# testing/driver_faults.py injects faults below the Cassandra journal (into the driver's own
# request path), so it is the one test-kit module that speaks to the driver
# and the dev node probes its own node with the driver
DRIVER_ALLOWED = ("journal/cassandra", "readside", "devnode", "testing/driver_faults.py")


def _imports(path: Path) -> set[str]:
    """Top-level names imported, with ``raysource.X`` reported as ``X``."""
    tree = parse_source(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            out.add(parts[1] if parts[0] == "raysource" and len(parts) > 1 else parts[0])
    return out


def _files(room: str) -> list[Path]:
    return sorted((ROOT / room).rglob("*.py"))


@pytest.mark.parametrize("room", sorted(RANK))
def test_imports_only_go_down(room: str) -> None:
    bad = []
    for path in _files(room):
        rel = path.relative_to(ROOT).as_posix()
        for top in _imports(path):
            if top in RANK and top != room and RANK[top] >= RANK[room]:
                bad.append(f"{rel} imports raysource.{top}")
            if room in RAY_FREE and top == "ray" and not rel.startswith(RAY_GLUE):
                bad.append(f"{rel} imports ray")
            if top == "cassandra" and not rel.startswith(DRIVER_ALLOWED):
                bad.append(f"{rel} imports cassandra-driver")
    assert not bad, bad


def test_every_room_has_a_layer() -> None:
    assert set(RANK) == set(rooms()), set(RANK) ^ set(rooms())


def test_no_generic_top_level_name_is_installed() -> None:
    """pyproject maps every room under the one import root."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "raysource" or p.startswith("raysource.") for p in setup["packages"])
    assert set(setup["package-dir"]) == set(setup["packages"])
    for room in RANK:
        assert f"raysource.{room}" in setup["packages"], room


def test_domain_api_is_plain_python() -> None:
    imports = _imports(ROOT / "runtime" / "aggregate.py")
    assert not imports & {"ray", "cassandra", "cloudpickle"}, imports


def test_import_raysource_is_ray_free() -> None:
    import subprocess
    import sys

    code = "import sys, raysource; raysource.AggregateType; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "False"


def test_no_room_over_500_lines_without_a_stated_reason() -> None:
    """A module longer than ~500 lines says why in its docstring (a ``Size:`` paragraph)."""
    long = []
    for room in [*RANK, facade_folder()]:
        for path in _files(room):
            text = path.read_text()
            if text.count("\n") > 520:
                doc = ast.get_docstring(parse_source(text)) or ""
                if "Size:" not in doc:
                    long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, long
