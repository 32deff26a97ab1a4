"""Smoke run of every benchmark of the suite: each benchmark module runs, as a subprocess, with
tiny parameters (``python -m benchmarks.run --tiny --only <name>``: a second or two of load,
small counts) on the session's Cassandra and (most of them) the session's Ray, and

* exits 0 (a benchmark that raises exits non-zero: its traceback is in the failure message),
* prints no traceback,
* prints its headline figures: ``benchmarks.run`` reads them from the benchmark's JSON into
  its summary table (a benchmark whose JSON lacks them is marked FAILED there).

The peer benchmark runs both sides: raysource and the Pekko program (built with Maven, offline
from the local cache first). Java and Maven are part of the test environment here and in CI: if
they are missing the peer smoke *fails*, it is never skipped.

The runs go a few at a time (``tests/support/bench_smoke.py``); the figures say
nothing about speed (tiny runs on a shared machine), only that every benchmark still runs.
Also checked: every benchmark module in ``benchmarks/`` is in the suite, a benchmark that
removes a node on purpose keeps Ray's raylet dumps out of the output, and ``benchmarks.run``
exits non-zero (a FAILED row in its summary) when a benchmark does not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_smoke import Smoke, run_all, selected

from benchmarks import run as bench_run

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMES = [b.name for b in bench_run.BENCHES]


@pytest.fixture(scope="module")
def smoke_runs(request, cassandra_contact, ray_local, tmp_path_factory) -> dict[str, Smoke]:
    """The tiny run of every selected benchmark (``bench_smoke``), a few at a time, once; most
    join the session's Ray."""
    import session_ray

    if not ray_local.is_initialized():  # a cluster test before this one ended it
        session_ray.start()
    host, port = cassandra_contact
    return run_all(
        selected(request.session),
        f"{host}:{port}",
        tmp_path_factory.mktemp("bench-smoke"),
        ray_local.get_runtime_context().gcs_address,
    )


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_every_benchmark_module_is_in_the_suite():
    """A new benchmark module without a tiny run in ``benchmarks.run.BENCHES`` fails here."""
    modules = {f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*_bench.py")}
    modules.add("benchmarks.peer.run")
    assert modules - {b.module for b in bench_run.BENCHES} == set()
    assert all(b.tiny for b in bench_run.BENCHES)


@pytest.mark.timeout(1500)  # the first one waits for every smoke run (the fixture)
@pytest.mark.parametrize("name", NAMES)
def test_benchmark_runs_with_tiny_parameters(name: str, smoke_runs: dict[str, Smoke]):
    smoke = smoke_runs[name]
    assert smoke.code == 0, f"{name} benchmark failed (exit {smoke.code}):\n{_tail(smoke.output)}"
    assert "Traceback (most recent call last)" not in smoke.output, _tail(smoke.output)
    assert name in smoke.results.get("benchmarks", {}), _tail(smoke.output)
    rows = bench_run.headline(name, smoke.results["benchmarks"][name])
    assert rows and all(re.search(r"\d", value) for _, value, _, _ in rows), rows
    summary = smoke.output[smoke.output.rindex("=== summary") :]
    assert "FAILED" not in summary, summary
    for figure, value, _, _ in rows:  # the headline figures are printed, in the summary
        assert re.search(
            rf"{re.escape(name)}\s+{re.escape(figure)}\s+{re.escape(value)}", summary
        ), summary


def test_deliberate_node_removal_keeps_ray_dumps_out(smoke_runs: dict[str, Smoke]):
    """The sharding benchmark removes a node on purpose: it says so in one line, and Ray's
    "Raylet is terminated ... Last 20 lines of the Raylet logs" dump is not in its output."""
    out = smoke_runs["sharding"].output
    assert "removes one of 3 local Ray nodes (node loss) on purpose" in out, _tail(out)
    assert "Raylet is terminated" not in out and "[state-dump]" not in out, _tail(out, 120)


def test_run_fails_when_a_benchmark_does_not_run(monkeypatch, cassandra_contact, tmp_path, capsys):
    """``make bench`` exits non-zero, with a FAILED row in its summary table, when one benchmark
    exits non-zero; the benchmarks that ran still have their rows."""
    host, port = cassandra_contact
    monkeypatch.setattr(
        bench_run,
        "BENCHES",
        [
            bench_run.Bench(
                "serialization",
                "benchmarks.serialization_bench",
                bench_run._serialization,
                contact=lambda c: [],
                tiny=["--n", "50"],
            ),
            bench_run.Bench(
                "broken",
                "benchmarks.no_such_benchmark",
                bench_run._serialization,
                contact=lambda c: [],
            ),
        ],
    )
    code = bench_run.main(["--tiny", "--contact", f"{host}:{port}", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    summary = out[out.rindex("=== summary") :]
    assert code == 1
    assert re.search(r"broken\s+FAILED\s+exit 1", summary), summary
    assert re.search(r"serialization\s+checked encode\s+\d", summary), summary
    assert "FAILED: broken" in summary
