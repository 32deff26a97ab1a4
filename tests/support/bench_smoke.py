"""The benchmark smoke runs of ``tests/project/test_benchmarks_smoke.py``.

Each benchmark's tiny run is a subprocess (``python -m benchmarks.run --tiny --only <name>``)
on the session's Cassandra, most of them on the session's Ray (:data:`SHARED_RAY`), the others
with a local Ray of their own; the smoke module's fixture starts them all
once and its tests read the results. (Starting them in the background at the session's first
test was tried: on 2 cores the suite got no faster, 25.7 min against 24.4, because the rest of
the suite is CPU-bound too.)

The runs go a few at a time (:data:`PARALLEL`). Benchmarks that start a Ray instance start
:data:`RAY_STAGGER_S` apart: Ray gives a starting node 30 s to register, and several Ray
instances starting at once on a busy 2-core box miss that. The others start when a slot is
free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import ray_start

ROOT = Path(__file__).resolve().parents[2]
MODULE = "test_benchmarks_smoke"
PARALLEL = 3  # benchmarks running at once (each its own Ray instance; 2 cores here)
RAY_STAGGER_S = 10.0
# benchmarks whose tiny run starts no Ray (an in-process journal or Cassandra only)
NO_RAY = frozenset({"journal", "overload", "personal", "retention", "serialization", "activation"})
# benchmarks whose tiny run joins the session's Ray (benchmarks.ray_start) instead of starting
# one: a Ray start is seconds of CPU on this box. The others need a Ray of their own: a
# multi-node cluster (sharding), Ray Serve (service), the memory of its process tree (peer).
SHARED_RAY = frozenset(
    {"tracing", "runtime", "projection", "rebuild", "timers", "idempotency", "pool"}
)
TIMEOUT_S = {"peer": 600}  # one benchmark's tiny run on a busy machine (peer: 2 sides)
SLOWEST_FIRST = ("peer", "projection", "sharding")  # peer: Maven build + JVM; sharding: 2 clusters


@dataclass
class Smoke:
    code: int
    output: str
    results: dict  # the run's combined JSON (benchmarks.run), {} if it wrote none
    seconds: float  # wall time of the run


class _RayStarts:
    """Ray-starting runs begin at least :data:`RAY_STAGGER_S` apart (shared by the threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = float("-inf")

    def wait(self) -> None:
        with self._lock:
            wait = self._last + RAY_STAGGER_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()


def _run(
    name: str, contact: str, results_dir: Path, ray_starts: _RayStarts, ray_address: str | None
) -> Smoke:
    out_dir = results_dir / name
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name in SHARED_RAY and ray_address:
        env[ray_start.ADDRESS_ENV] = ray_address
    elif name not in NO_RAY:
        ray_starts.wait()
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--only", name]
    cmd += ["--contact", contact, "--results", str(out_dir)]
    timeout = TIMEOUT_S.get(name, 300)
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:  # the child's Ray is ended by its own shutdown
        code = -1
        output = f"timed out after {timeout} s\n" + "".join(
            (x.decode() if isinstance(x, bytes) else x or "") for x in (exc.stdout, exc.stderr)
        )
    combined = sorted(out_dir.glob("bench-*-tiny.json"))
    return Smoke(
        code,
        output,
        json.loads(combined[-1].read_text()) if combined else {},
        time.monotonic() - t0,
    )


def run_all(
    names: set[str], contact: str, results_dir: Path, ray_address: str | None = None
) -> dict[str, Smoke]:
    """The tiny run of each of ``names``, :data:`PARALLEL` at a time, the slowest first; those
    in :data:`SHARED_RAY` on the Ray at ``ray_address`` if given."""
    t0, ray_starts = time.monotonic(), _RayStarts()
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="bench-smoke") as pool:
        futures = {
            n: pool.submit(_run, n, contact, results_dir, ray_starts, ray_address)
            for n in sorted(names, key=lambda n: (n not in SLOWEST_FIRST, n))
        }
        runs = {n: f.result() for n, f in futures.items()}
    print(
        f"benchmark smoke runs: {time.monotonic() - t0:.0f} s in all; "
        + ", ".join(f"{n} {r.seconds:.0f} s" for n, r in runs.items())
    )  # shown with -s
    return runs


def selected(session: pytest.Session) -> set[str]:
    """The benchmarks the selected smoke tests look at (e.g. ``-k runtime``: one)."""
    names: set[str] = set()
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] == MODULE:
            callspec = getattr(item, "callspec", None)
            if callspec is not None and "name" in callspec.params:
                names.add(callspec.params["name"])
            elif item.name == "test_deliberate_node_removal_keeps_ray_dumps_out":
                names.add("sharding")
    return names
