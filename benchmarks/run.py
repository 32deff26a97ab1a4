"""Every raysource benchmark in one run: ``make bench`` (``python -m benchmarks.run``).

Gets Cassandra once (explicit contact point, running node, Docker, or a node from Maven jars),
runs each benchmark script against it in turn (each prints its own table: the runtime's figure
beside the raw limit measured in the same run, and the ratio), then writes all their JSON into
one file ``results/bench-<timestamp>.json`` for comparison over time and prints one summary
table: each benchmark's headline figures beside their limit or peer, and the ratio. Exit 0 only
when every selected benchmark ran (exit 0, its JSON written, its headline figures in it). A
benchmark whose Ray instance did not start within Ray's fixed 30 s (a busy machine) is run once
more, and the output says so; any other failure is final.

``--tiny``: every benchmark with tiny parameters (a second or two of load, small counts): the
smoke run of ``tests/project/test_benchmarks_smoke.py``; its figures prove the benchmark runs,
not how
fast anything is. ``--only peer`` (not in the default set: ``make peer-bench`` runs it for real,
15-25 min) adds the Pekko peer benchmark (needs ``java`` and ``mvn``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from raysource.devnode.select import select_cassandra

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[str, str, str, str]  # figure, value, limit or peer, ratio


def _x(a: float, b: float, digits: int = 2) -> str:
    return f"x{a / b:.{digits}f}" if b else "n/a"


def _journal(r: dict) -> list[Row]:
    rows = []
    for w in r["writes"]:
        rows.append(
            (
                f"append {w['size']} B, guard on, {r['concurrency']} writers",
                f"{w['journal_guard_on_events_per_s']:,.0f} ev/s",
                f"raw driver inserts {w['raw_events_per_s']:,.0f} ev/s",
                f"x{w['ratio_guard_on']:.2f}",
            )
        )
    rp = r["replay"]
    rows.append(
        (
            f"replay {rp['events']:,} events",
            f"{rp['journal_events_per_s']:,.0f} ev/s",
            f"raw paged read {rp['raw_events_per_s']:,.0f} ev/s",
            _x(rp["journal_events_per_s"], rp["raw_events_per_s"]),
        )
    )
    return rows


def _runtime(r: dict) -> list[Row]:
    limit = r["append"]["one_writer_limit_per_s"]
    raw_lwt = r["raw"]["insert_lwt_per_s"]
    hot, many = r["hot_hosted"], r["many_batched_hosted"]
    floor = r["bare_actor"]["call_p50_ms"] + r["append"]["p50_ms"]
    refused = sum(v.get("overloaded", 0) for v in r.values() if isinstance(v, dict))
    return [
        (
            "hot aggregate hosted, pipelined asks",
            f"{hot['commands_per_s']:,.0f} cmd/s",
            f"1 / append latency {limit:,.0f} /s",
            _x(hot["commands_per_s"], limit),
        ),
        (
            f"many aggregates hosted, ask_many x{many['batch']}",
            f"{many['commands_per_s']:,.0f} cmd/s",
            f"raw LWT inserts {raw_lwt:,.0f} /s",
            _x(many["commands_per_s"], raw_lwt),
        ),
        (
            "ask write hosted p50",
            f"{r['rtt_hosted']['write_p50_ms']:.2f} ms",
            f"bare call + append {floor:.2f} ms",
            _x(r["rtt_hosted"]["write_p50_ms"], floor),
        ),
        (
            f"refused by the mailbox bound (window {r['window']})",
            f"{refused} commands",
            f"bound {r['mailbox_bound']} in flight",
            _x(r["window"], r["mailbox_bound"]),
        ),
    ]


def _sharding(r: dict) -> list[Row]:
    res = r["resolve"]
    rows = [
        (
            "cached ref ask p50",
            f"{res['cached_ref_ask']['p50_ms']:.2f} ms",
            f"raw handle ask {res['raw_handle_ask']['p50_ms']:.2f} ms",
            _x(res["cached_ref_ask"]["p50_ms"], res["raw_handle_ask"]["p50_ms"]),
        ),
        (
            "coordinator hop p50",
            f"{res['coordinator_hop']['p50_ms']:.2f} ms",
            f"direct actor call {res['direct_actor_call']['p50_ms']:.2f} ms",
            _x(res["coordinator_hop"]["p50_ms"], res["direct_actor_call"]["p50_ms"]),
        ),
    ]
    if "node_loss" in r:
        nl = r["node_loss"]
        rows.append(
            (
                f"node loss: {nl['entities_on_lost_node']} entities serving again",
                f"{nl['all_serving_again_s']:.2f} s",
                f"dead-node detection ~{nl['health_check_detection_s']} s",
                _x(nl["all_serving_again_s"], nl["health_check_detection_s"]),
            )
        )
    return rows


def _projection(r: dict) -> list[Row]:
    a, noop = r["lag_after"], r["noop_per_s"]
    return [
        (
            "lag ack -> view row p99 (live path)",
            f"{a['lag_p99_ms']:.0f} ms",
            "100 ms",
            _x(a["lag_p99_ms"], 100),
        ),
        ("completeness: missed / applied twice", f"{a['missed']} / {a['doubled']}", "0 / 0", ""),
        (
            "EffectivelyOnceView catching up",
            f"{r['view_after_per_s']:,} ev/s",
            f"no-op projection {noop:,} ev/s",
            _x(r["view_after_per_s"], noop),
        ),
        (
            "no-op projection",
            f"{noop:,} ev/s",
            f"raw events_by_tag {r['raw_per_s']:,} ev/s",
            _x(noop, r["raw_per_s"]),
        ),
    ]


def _rebuild(r: dict) -> list[Row]:
    return [
        (
            f"backfill {r['events']:,} events, 1 Ray Data worker",
            f"{r['backfill_1_per_s']:,} ev/s",
            f"one-worker projection replay {r['replay_per_s']:,} ev/s",
            _x(r["backfill_1_per_s"], r["replay_per_s"]),
        ),
        (
            "backfill, 2 Ray Data workers",
            f"{r['backfill_2_per_s']:,} ev/s",
            f"1 worker {r['backfill_1_per_s']:,} ev/s",
            _x(r["backfill_2_per_s"], r["backfill_1_per_s"]),
        ),
    ]


def _service(r: dict) -> list[Row]:
    rows = []
    for row in ("sequential reserve", "concurrent reserve"):
        refs, http = r[row]["refs"], r[row]["http"]
        rows.append(
            (
                f"{row} over HTTP",
                f"{http['per_s']:,.1f} /s",
                f"through refs {refs['per_s']:,.1f} /s",
                _x(http["per_s"], refs["per_s"]),
            )
        )
    return rows


def _timers(r: dict) -> list[Row]:
    return [
        (
            f"timers due at once, pacing {v['max_fires_per_s']:,.0f}/s",
            f"{v['fires_per_s']:,.0f} fires/s",
            f"ask_many {v['limit_ask_many_cmd_per_s']:,.0f} cmd/s",
            f"x{v['ratio_to_limit']:.2f}",
        )
        for v in (r["paced"], r["unpaced"])
    ]


def _overload(r: dict) -> list[Row]:
    b, u = r["bounded"], r["unbounded"]
    return [
        (
            "flood, bounded: peak calls in flight",
            f"{b['peak_in_flight']:,}",
            f"unbounded {u['peak_in_flight']:,}",
            _x(b["peak_in_flight"], u["peak_in_flight"]),
        ),
        (
            "flood, bounded: RSS growth",
            f"{b['rss_growth_mib']} MiB",
            f"unbounded {u['rss_growth_mib']} MiB",
            "",
        ),
        ("flood, bounded: refused (not applied)", f"{b['refused']:,} of {b['sent']:,}", "", ""),
    ]


def _idempotency(r: dict) -> list[Row]:
    return [
        (
            f"ask p50 with idempotency keys ({name})",
            f"{v['p50_us']['on']:.0f} us",
            f"keys off {v['p50_us']['off']:.0f} us",
            f"x{v['p50_on_over_off']:.2f}",
        )
        for name, v in r.items()
    ]


def _serialization(r: dict) -> list[Row]:
    us = r["us_per_call"]
    enc, raw = (
        us["encode: Serialization.encode (checked)"],
        us["encode: raw msgspec.json.encode (limit)"],
    )
    dec, old = (
        us["decode: Serialization.decode"],
        us["decode: msgspec.convert(decode(b)) (old path)"],
    )
    return [
        ("checked encode", f"{enc:.2f} us", f"raw msgspec encode {raw:.2f} us", _x(enc, raw)),
        ("decode", f"{dec:.2f} us", f"old convert path {old:.2f} us", _x(dec, old)),
    ]


def _personal(r: dict) -> list[Row]:
    us = r["us_cpu_per_event"]
    sealed, plain = us["personal: encode + decode"], us["plain: encode + decode"]
    return [
        (
            "personal fields, encode + decode (2 subjects)",
            f"{sealed:.2f} us CPU",
            f"plain path {plain:.2f} us CPU",
            _x(sealed, plain),
        )
    ]


def _pool(r: dict) -> list[Row]:
    f = r["first_touch_s"]
    return [
        (
            f"first touch of {r['aggregates']} dedicated aggregates, warm pool",
            f"{f['pool']:.2f} s",
            f"no pool {f['no_pool']:.2f} s",
            f"x{f['ratio']:.2f} faster",
        )
    ]


def _activation(r: dict) -> list[Row]:
    rows = []
    for key, label in (("first_touch_s", "first touch"), ("recover_s", "recovery of many")):
        f = r[key]
        rows.append(
            (
                f"{label} of {r['aggregates']:,} aggregates, bulk",
                f"{f['bulk']:.2f} s",
                f"one by one {f['one_by_one']:.2f} s",
                f"x{f['ratio']:.2f}",
            )
        )
    return rows


def _tracing(r: dict) -> list[Row]:
    off = r["modes"]["off"]
    rows = []
    for mode, label in (("no-exporter", "extra, no exporter"), ("memory", "in-memory exporter")):
        m = r["modes"][mode]
        rows.append(
            (
                f"W4 p50, tracing {label}",
                f"{m['w4']['p50_ms']:.2f} ms",
                f"tracing off {off['w4']['p50_ms']:.2f} ms",
                f"x{m['w4_p50_vs_off']:.2f}",
            )
        )
        rows.append(
            (
                f"W2 cmd/s, tracing {label}",
                f"{m['w2']['commands_per_s']:,.0f} cmd/s",
                f"tracing off {off['w2']['commands_per_s']:,.0f} cmd/s",
                f"x{m['w2_cmd_per_s_vs_off']:.2f}",
            )
        )
        rows.append(
            (
                f"W2 CPU/command, tracing {label}",
                f"{m['w2']['cpu_ms_per_command']:.2f} ms",
                f"tracing off {off['w2']['cpu_ms_per_command']:.2f} ms",
                f"x{m['w2_cpu_vs_off']:.2f}",
            )
        )
    return rows


def _peer(r: dict) -> list[Row]:
    m = r["medians"]
    w1h, _, _, w1p = m["w1"]
    w2h, _, w2p, _, _ = m["w2"]
    w4h, _, _, w4p = m["w4_p50_ms"]
    mem_r, mem_p = m["memory_mib"]
    return [
        ("W1 one hot aggregate", f"{w1h:,.0f} cmd/s", f"Pekko {w1p:,.0f} cmd/s", _x(w1h, w1p)),
        ("W2 many aggregates", f"{w2h:,.0f} cmd/s", f"Pekko {w2p:,.0f} cmd/s", _x(w2h, w2p)),
        ("W4 sequential p50", f"{w4h:.2f} ms", f"Pekko {w4p:.2f} ms", _x(w4h, w4p)),
        ("memory after W2 (RSS)", f"{mem_r:,.0f} MiB", f"Pekko {mem_p:,.0f} MiB", _x(mem_r, mem_p)),
    ]


def _retention(r: dict) -> list[Row]:
    c, rd = r["cleanup"], r["read_p50_ms"]
    return [
        (
            f"retention cleanup, {c['tombstones']} tombstones",
            f"{c['rows_per_s']:,.0f} rows/s",
            f"a tombstone per row: {c['rows']:,}",
            _x(c["rows"], c["tombstones"], 0),
        ),
        (
            "read of a cleaned aggregate (p50)",
            f"{rd['cleaned_after']:.2f} ms",
            f"never cleaned {rd['kept_after']:.2f} ms",
            _x(rd["cleaned_after"], rd["kept_after"]),
        ),
        (
            "cleanup of closed aggregates (KeepUntilFinal), CPU",
            f"{r['cleanup_final']['cpu_ms_per_1k_rows']:.1f} ms/1k rows",
            f"KeepFromSnapshot {c['cpu_ms_per_1k_rows']:.1f} ms/1k rows",
            _x(r["cleanup_final"]["cpu_ms_per_1k_rows"], c["cpu_ms_per_1k_rows"]),
        ),
    ]


@dataclass(frozen=True)
class Bench:
    """One benchmark: its module, how it is told the contact point and its output file, its
    tiny parameters (the smoke run), and the headline rows of its JSON."""

    name: str
    module: str
    headline: Callable[[dict], list[Row]]
    contact: Callable[[str], list[str]] = lambda c: ["--contact", c]
    tiny: list[str] = field(default_factory=list)
    real: list[str] = field(default_factory=list)
    default: bool = True  # in ``make bench`` without --only

    def command(self, contact: str, out: Path, tiny: bool) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            *self.contact(contact),
            "--out",
            str(out),
            *(self.tiny if tiny else self.real),
        ]


BENCHES = [
    Bench(
        "tracing",
        "benchmarks.tracing_bench",
        _tracing,
        tiny=[
            "--sequential",
            "10",
            "--entities",
            "4",
            "--callers",
            "2",
            "--seconds",
            "0.5",
            "--warmup",
            "0.1",
            "--rounds",
            "1",
        ],
    ),
    Bench(
        "journal",
        "benchmarks.journal_bench",
        _journal,
        tiny=["--concurrency", "8", "--events", "200", "--sizes", "100", "--replay-events", "300"],
    ),
    Bench(
        "runtime",
        "benchmarks.runtime_bench",
        _runtime,
        tiny=[
            "--callers",
            "4",
            "--per-caller",
            "40",
            "--entities",
            "1",
            "--round-trips",
            "10",
            "--batch",
            "20",
            "--scale",
            "0.03",
        ],
    ),
    Bench(
        "sharding",
        "benchmarks.sharding_bench",
        _sharding,
        tiny=["--cold", "1", "--calls", "10", "--entities", "4"],
    ),
    Bench(
        "projection",
        "benchmarks.projection_bench",
        _projection,
        tiny=[
            "--seconds",
            "1.5",
            "--writers",
            "4",
            "--rate",
            "40",
            "--bulk",
            "200",
            "--warmup",
            "0.5",
            "--slice-events",
            "200",
            "--rounds",
            "1",
        ],
    ),
    Bench(
        "rebuild",
        "benchmarks.rebuild_bench",
        _rebuild,
        tiny=["--events", "300", "--per-show", "50", "--tasks", "2"],
    ),
    Bench(
        "service",
        "benchmarks.service_bench",
        _service,
        tiny=["--rounds", "1", "--per-round", "4", "--concurrency", "2", "--seconds", "0.5"],
    ),
    Bench(
        "timers", "benchmarks.timers_bench", _timers, tiny=["--aggregates", "4", "--timers", "5"]
    ),
    Bench(
        "overload",
        "benchmarks.overload_bench",
        _overload,
        contact=lambda c: [],
        tiny=["--seconds", "0.5", "--rate", "20000"],
    ),
    Bench(
        "idempotency",
        "benchmarks.idempotency_bench",
        _idempotency,
        contact=lambda c: ["--cassandra", c],
        tiny=["-n", "40"],
    ),
    Bench(
        "retention",
        "benchmarks.retention_bench",
        _retention,
        tiny=["--aggregates", "2", "--events", "60", "--partition-size", "10", "--rounds", "2"],
    ),
    Bench(
        "serialization",
        "benchmarks.serialization_bench",
        _serialization,
        contact=lambda c: [],
        tiny=["--n", "300"],
    ),
    Bench(
        "activation",
        "benchmarks.activation_bench",
        _activation,
        tiny=["--n", "20", "--events", "2", "--rounds", "1"],
    ),
    Bench("pool", "benchmarks.pool_bench", _pool, tiny=["--n", "2", "--rounds", "1"]),
    Bench(
        "personal",
        "benchmarks.personal_bench",
        _personal,
        tiny=["--n", "300", "--subjects", "5"],
    ),
    Bench(
        "peer",
        "benchmarks.peer.run",
        _peer,
        default=False,
        tiny=[
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--warmup",
            "0.5",
            "--callers",
            "4",
            "--entities",
            "20",
            "--sequential",
            "20",
            "--recovery-events",
            "50",
            "--recoveries",
            "1",
            "--keyspace-prefix",
            "smoke_peer",
            "--strict",
        ],
        real=["--strict"],
    ),
]


def headline(name: str, result: dict) -> list[Row]:
    """The headline rows of benchmark ``name`` from its JSON ``result`` (raises KeyError etc.
    if the figures are missing)."""
    return next(b for b in BENCHES if b.name == name).headline(result)


def summary(names: list[str], results: dict[str, dict], failed: dict[str, str]) -> str:
    """One table: each benchmark's headline rows (figure, value, limit or peer, ratio), and a
    FAILED row for each benchmark that did not run; raises nothing."""
    rows: list[tuple[str, ...]] = []
    for name in names:
        if name in results:
            try:
                got = headline(name, results[name])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                failed[name] = f"no headline figure in its JSON ({exc!r})"
            else:
                rows += [(name, *row) for row in got]
                continue
        rows.append((name, "FAILED", failed.get(name, "?"), "", ""))
    head = ("benchmark", "figure", "value", "limit / peer (same run)", "ratio")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths)).rstrip()  # noqa
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


# what ``ray.init`` raises when its node does not register within 30 s (hard-coded in Ray); on
# a busy machine that says nothing about the benchmark, which is then run once more (said so)
RAY_START_TIMEOUT = "The current node timed out during startup"


def _run(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd``, its output passed through as it comes; (exit code, output)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default=None, help="host:port of Cassandra")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only these (" + ", ".join(b.name for b in BENCHES) + ")",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny parameters: a smoke run (proves each benchmark runs)",
    )
    ap.add_argument(
        "--results",
        default=str(ROOT / "results"),
        help="directory for the JSON files (default: results/)",
    )
    args = ap.parse_args(argv)
    unknown = set(args.only) - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    source = select_cassandra(args.contact, say=print)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    combined: dict = {
        "started": stamp,
        "contact": source.contact_point,
        "tiny": args.tiny,
        "benchmarks": {},
    }
    failed: dict[str, str] = {}
    selected = [b for b in BENCHES if (b.name in args.only if args.only else b.default)]
    took: dict[str, float] = {}
    try:
        for i, bench in enumerate(selected, 1):
            out = out_dir / (f"{bench.name}_bench{'_tiny' if args.tiny else ''}.json")
            out.unlink(missing_ok=True)
            cmd = bench.command(source.contact_point, out, args.tiny)
            print(
                f"\n=== [{i}/{len(selected)}] {bench.name} benchmark "
                f"({' '.join(cmd[2:3])}{' --tiny' if args.tiny else ''})",
                flush=True,
            )
            t0 = time.monotonic()
            code, output = _run(cmd)
            if code != 0 and RAY_START_TIMEOUT in output:
                print(
                    f"=== {bench.name}: Ray did not start within its 30 s (a busy machine): "
                    "once more",
                    flush=True,
                )
                out.unlink(missing_ok=True)
                code, output = _run(cmd)
            took[bench.name] = time.monotonic() - t0
            print(f"=== {bench.name}: exit {code} in {took[bench.name]:.0f} s", flush=True)
            if code != 0:
                failed[bench.name] = f"exit {code}"
            elif not out.exists():
                failed[bench.name] = f"wrote no figures ({out.name})"
            else:
                combined["benchmarks"][bench.name] = json.loads(out.read_text())
    finally:
        source.release()
    table = summary([b.name for b in selected], combined["benchmarks"], failed)
    combined["summary"] = table
    combined["seconds"] = took
    path = out_dir / f"bench-{stamp}{'-tiny' if args.tiny else ''}.json"
    path.write_text(json.dumps(combined, indent=2))
    print(
        f"\n=== summary ({'tiny parameters: proves each runs, not speed; ' if args.tiny else ''}"
        f"one shared machine: read the ratios)\n{table}"
    )
    print(
        f"\nall figures: {path}"
        + (
            f"; FAILED: {', '.join(failed)}"
            if failed
            else f"; {len(selected)} of {len(selected)} benchmarks ran"
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
