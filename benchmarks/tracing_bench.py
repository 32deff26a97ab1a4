"""What tracing costs: W4 p50 and W2 commands/s (the peer benchmark's workloads, on raysource
with Cassandra) with tracing off, with the ``raysource[otel]`` extra installed but no exporter,
and with an in-memory exporter in every process, in one run.

Each mode runs in a child process with its own local Ray instance (tracing is decided once per
process, at import: ``RAYSOURCE_TRACING``; the in-memory exporter is installed in the driver
and, by ``worker_process_setup_hook``, in every Ray worker). The modes run one after the
other on the same Cassandra keyspace; the ratios to "off" are the figures (wall-clock numbers
on a shared machine move between runs; the ratio of runs side by side less so). W2 also
reports the CPU per command of the whole Ray instance (``cpu_ms_per_command``). ``--rounds``
runs every mode that many times in alternating order (off, no exporter, memory, then back) and
averages: the machine's load drifts over minutes.

  python -m benchmarks.tracing_bench --contact 127.0.0.1:9042 --out r.json   # the full run
  make bench BENCH_ARGS="--only tracing"        # the same, with the summary table (quiet box)
  python -m benchmarks.run --tiny --only tracing   # small sizes: a smoke run (seconds)

or small sizes by hand: ``--sequential 50 --entities 10 --callers 4 --seconds 2 --rounds 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks import ray_start

MODES = ("off", "no-exporter", "memory")


_EXPORTER: list[Any] = []  # this process's in-memory exporter (memory mode)


def _install_memory_exporter() -> None:
    """Every process: an SDK provider whose spans go to an in-memory exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import benchmarks.tracing_bench as here  # the module (this may run as __main__)

    provider = TracerProvider()
    here._EXPORTER.append(InMemorySpanExporter())
    provider.add_span_processor(SimpleSpanProcessor(here._EXPORTER[-1]))
    trace.set_tracer_provider(provider)


def child(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from benchmarks.peer import raysource_side as side
    from benchmarks.peer.aggregate import PAYLOAD, PEER, Add
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.runtime import tracing
    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.system import System

    memory = args.mode == "memory"
    if memory:
        _install_memory_exporter()
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(side.ROOT)])
    ray_start.init(
        f"trace-bench-{uuid.uuid4().hex[:6]}",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": _install_memory_exporter} if memory else None,
    )
    config = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace)
    out: dict[str, Any] = {"mode": args.mode, "tracing_enabled": tracing.ENABLED}
    try:
        system = System.start(
            f"trace{uuid.uuid4().hex[:8]}",
            store=StoreSpec.for_cassandra(config, create_schema=True),
            types=[PEER],
            placement={PEER.name: "hosted"},
        )
        try:
            system.entity(PEER, "boot").ask(Add(PAYLOAD), timeout=120)
            out["w4"] = side.w4(system, args.sequential)
            out["w2"] = side.w2(system, args.entities, args.callers, args.warmup, args.seconds)
        finally:
            system.shutdown()
    finally:
        ray.shutdown()
    # the driver's reference spans (the hosts' spans are in their processes' exporters)
    import benchmarks.tracing_bench as here

    exporters = here._EXPORTER
    out["driver_spans"] = len(exporters[0].get_finished_spans()) if exporters else 0
    if memory and not out["driver_spans"]:
        raise RuntimeError("tracing with an in-memory exporter recorded no span")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="bench_tracing")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sequential", type=int, default=1000, help="W4 commands")
    ap.add_argument("--entities", type=int, default=200, help="W2 aggregates")
    ap.add_argument("--callers", type=int, default=20, help="W2 callers")
    ap.add_argument("--seconds", type=float, default=15.0, help="W2 measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--rounds", type=int, default=2, help="runs per mode (alternating order), averaged"
    )
    ap.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode is not None:  # one mode, in this (child) process
        Path(args.out).write_text(json.dumps(child(args)))
        return
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    order = [m for r in range(args.rounds) for m in (MODES if r % 2 == 0 else MODES[::-1])]
    for mode in order:  # off, no-exporter, memory, then back: drift hits every mode alike
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        env = {**os.environ, "RAYSOURCE_TRACING": "off" if mode == "off" else "on"}
        cmd = [sys.executable, "-m", "benchmarks.tracing_bench", *_without_out(sys.argv[1:])]
        subprocess.run([*cmd, "--mode", mode, "--out", path], check=True, env=env)
        r = json.loads(Path(path).read_text())
        os.unlink(path)
        runs[mode].append(r)
        print(
            f"  tracing {mode:<12} W4 p50 {r['w4']['p50_ms']:7.2f} ms   W2 "
            f"{r['w2']['commands_per_s']:8.1f} cmd/s  ({r['w2']['cpu_ms_per_command']:.2f} "
            "ms CPU/cmd)",
            flush=True,
        )

    def mean(mode: str, workload: str, key: str) -> float:
        return statistics.fmean(r[workload][key] for r in runs[mode])

    results: dict[str, Any] = {}
    for mode in MODES:
        results[mode] = {
            "runs": runs[mode],
            "w4": {"p50_ms": mean(mode, "w4", "p50_ms")},
            "w2": {
                "commands_per_s": mean(mode, "w2", "commands_per_s"),
                "cpu_ms_per_command": mean(mode, "w2", "cpu_ms_per_command"),
            },
        }
    off = results["off"]
    for mode in MODES[1:]:
        r = results[mode]
        r["w4_p50_vs_off"] = r["w4"]["p50_ms"] / off["w4"]["p50_ms"]
        r["w2_cmd_per_s_vs_off"] = r["w2"]["commands_per_s"] / max(
            off["w2"]["commands_per_s"], 1e-9
        )
        r["w2_cpu_vs_off"] = r["w2"]["cpu_ms_per_command"] / max(
            off["w2"]["cpu_ms_per_command"], 1e-9
        )
    Path(args.out).write_text(json.dumps({"modes": results}, indent=2))
    for mode in MODES[1:]:
        r = results[mode]
        print(
            f"tracing {mode} vs off (same run, means of {args.rounds}): W4 p50 x"
            f"{r['w4_p50_vs_off']:.2f}, W2 cmd/s x{r['w2_cmd_per_s_vs_off']:.2f}, "
            f"W2 CPU/cmd x{r['w2_cpu_vs_off']:.2f}",
            flush=True,
        )


def _without_out(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
