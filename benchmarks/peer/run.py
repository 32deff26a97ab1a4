"""Peer benchmark: raysource beside Apache Pekko (Persistence Typed + Cluster Sharding +
pekko-persistence-cassandra), same aggregate, same Cassandra node, one run: ``make peer-bench``.

Each round runs the raysource side (``benchmarks/peer/raysource_side.py``: its own local Ray
instance, then the limits from Python) and the Pekko side (``PekkoPeer``, one JVM), one after
the other, the order alternating from round to round; the table gives per-figure medians over
the rounds and the ratios of those medians. Workloads (closed loops, callers in the driver /
the JVM):

* W1 one hot aggregate, ``--callers`` concurrent callers (raysource: hosted and dedicated);
* W2 ``--entities`` aggregates, ``--callers`` callers at random, each aggregate touched once
  before the clock (that first touch is a row); memory (RSS of every process) right after;
* W4 one sequential caller, ``--sequential`` commands;
* W3 the first command to a passivated aggregate of ``--recovery-events`` events.

Guard on is raysource's default (conditional appends); guard off is ``fencing=False``.
Defaults are shorter than the issue's (10 s windows after 3 s warm-up, 1,000 sequential
commands) to keep three rounds under ~15 minutes on 2 cores. Results: the table on stdout and
``results/peer-bench-<stamp>.json`` (every round's raw figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raysource.devnode.select import select_cassandra

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MiB = 2**20


def build_pekko() -> list[str]:
    """``mvn package`` when the build is missing or older than its sources (offline first,
    from the local Maven cache; online if that lacks something); the java -cp."""
    target = HERE / "target"
    cp_file = target / "classpath.txt"
    sources = [HERE / "pom.xml", *(HERE / "src").rglob("*")]
    if not cp_file.exists() or max(p.stat().st_mtime for p in sources) > cp_file.stat().st_mtime:
        print("building the Pekko side (mvn -q -B -o package) ...", flush=True)
        mvn = ["mvn", "-q", "-B", "-Dstyle.color=never"]
        offline = subprocess.run([*mvn, "-o", "package"], cwd=HERE, capture_output=True, text=True)
        if offline.returncode != 0:
            print(
                "offline build failed (local Maven cache incomplete?); mvn -q -B package ...",
                flush=True,
            )
            subprocess.run([*mvn, "package"], cwd=HERE, check=True)
    return [str(target / "classes"), cp_file.read_text().strip()]


def run_pekko(cp: list[str], contact: str, out: Path, a: argparse.Namespace) -> dict:
    cmd = [
        "java",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        f"-Dpeer.contact={contact}",
        f"-Dpeer.keyspace={a.keyspace_prefix}_pekko",
        "-cp",
        ":".join(cp),
        "peerbench.PekkoPeer",
        "--seconds",
        str(a.seconds),
        "--warmup",
        str(a.warmup),
        "--callers",
        str(a.callers),
        "--entities",
        str(a.entities),
        "--sequential",
        str(a.sequential),
        "--recovery-events",
        str(a.recovery_events),
        "--recoveries",
        str(a.recoveries),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return json.loads(out.read_text())


def run_raysource(contact: str, out: Path, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.peer.raysource_side",
        "--contact",
        contact,
        "--keyspace",
        f"{a.keyspace_prefix}_raysource",
        "--out",
        str(out),
        "--seconds",
        str(a.seconds),
        "--warmup",
        str(a.warmup),
        "--callers",
        str(a.callers),
        "--entities",
        str(a.entities),
        "--sequential",
        str(a.sequential),
        "--recovery-events",
        str(a.recovery_events),
        "--recoveries",
        str(a.recoveries),
    ]
    if getattr(a, "per_append", False):
        cmd.append("--per-append")
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- the table


def med(rounds: list[dict], *path: str) -> float:
    """Median over the rounds that have the figure (a failed workload has only "error")."""
    values = []
    for r in rounds:
        v: Any = r
        try:
            for p in path:
                v = v[p]
        except KeyError:
            continue
        values.append(float(v))
    return statistics.median(values) if values else float("nan")


def table(rs: list[dict], pk: list[dict], a: argparse.Namespace) -> tuple[list, dict]:
    """Rows (workload, raysource on, raysource off, Pekko, ratio, goal) and the medians."""
    m = lambda *p: med(rs, *p)  # noqa: E731
    p = lambda *q: med(pk, *q)  # noqa: E731
    lim = {k: m("limits", k) for k in rs[0]["limits"]}
    floor = lim["bare_ray_call_p50_ms"] + lim["insert_p50_ms"] + 0.5
    w1h, w1d = m("w1_hosted_on", "commands_per_s"), m("w1_dedicated_on", "commands_per_s")
    w1o, w1p = m("w1_hosted_off", "commands_per_s"), p("w1", "commands_per_s")
    w2h, w2o, w2p = (
        m("w2_hosted_on", "commands_per_s"),
        m("w2_hosted_off", "commands_per_s"),
        p("w2", "commands_per_s"),
    )
    w2h99, w2p99 = m("w2_hosted_on", "p99_ms"), p("w2", "p99_ms")
    w4h, w4o, w4d, w4p = (
        m("w4_hosted_on", "p50_ms"),
        m("w4_hosted_off", "p50_ms"),
        m("w4_dedicated_on", "p50_ms"),
        p("w4", "p50_ms"),
    )
    w3h, w3d, w3p = (
        m("w3_hosted_on", "median_ms"),
        m("w3_dedicated_on", "median_ms"),
        p("w3", "median_ms"),
    )
    mem_r, mem_p = m("w2_hosted_on", "memory", "rss_bytes") / MiB, p("rss_after_w2_bytes") / MiB
    procs = m("w2_hosted_on", "memory", "processes")
    pss_r = m("w2_hosted_on", "memory", "pss_bytes") / MiB
    touch_r, touch_p = m("w2_hosted_on", "first_touch_s"), p("w2", "first_touch_s")
    touch_errors = sum(r.get("w2_hosted_on", {}).get("first_touch_errors", 0) for r in rs)
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    rows = [
        (
            f"W1 one hot aggregate, {a.callers} callers, {a.seconds:g} s",
            f"{w1h:,.0f} cmd/s hosted, {w1d:,.0f} dedicated; "
            f"p50 {m('w1_hosted_on', 'p50_ms'):.0f} ms;"
            f" {m('w1_hosted_on', 'commands_per_write'):.1f} cmds/write",
            f"{w1o:,.0f}",
            f"{w1p:,.0f} cmd/s, p50 {p('w1', 'p50_ms'):.0f} ms",
            f"{w1h / w1p:.2f}x ({w1d / w1p:.2f}x ded.)",
            f"≥ 3x: {ok(w1h / w1p >= 3)}",
        ),
        (
            f"W2 {a.entities:,} aggregates, {a.callers} callers at random, {a.seconds:g} s",
            f"{w2h:,.0f} cmd/s hosted, p50 {m('w2_hosted_on', 'p50_ms'):.0f} ms, "
            f"p99 {w2h99:.0f} ms",
            f"{w2o:,.0f}",
            f"{w2p:,.0f} cmd/s, p50 {p('w2', 'p50_ms'):.0f} ms, p99 {w2p99:.0f} ms",
            f"{w2h / w2p:.2f}x",
            f"≥ 1.5x, p99 ≤ Pekko's: {ok(w2h / w2p >= 1.5 and w2h99 <= w2p99)}",
        ),
        (
            f"W4 one sequential caller, {a.sequential:,} commands",
            f"p50 {w4h:.2f} ms hosted ({m('w4_hosted_on', 'commands_per_s'):.0f} cmd/s), "
            f"{w4d:.2f} ms dedicated",
            f"p50 {w4o:.2f} ms",
            f"p50 {w4p:.2f} ms ({p('w4', 'commands_per_s'):.0f} cmd/s)",
            f"{w4h / w4p:.1f}x the latency",
            f"≤ {floor:.2f} ms (limits): {ok(w4h <= floor)}",
        ),
        (
            f"W3 recovery of {a.recovery_events:,} events "
            "(first command to a passivated aggregate)",
            f"{w3h:,.0f} ms hosted, {w3d:,.0f} ms dedicated",
            "",
            f"{w3p:,.0f} ms",
            f"{w3p / w3h:.1f}x faster hosted, {w3p / w3d:.1f}x dedicated",
            f"≥ 2x faster both: {ok(w3p / w3h >= 2 and w3p / w3d >= 2)}",
        ),
        (
            "memory right after W2 (RSS)",
            f"{mem_r:,.0f} MiB in {procs:.0f} processes (PSS {pss_r:,.0f} MiB)",
            "",
            f"{mem_p:,.0f} MiB (one JVM)",
            f"{mem_r / mem_p:.1f}x",
            f"≤ 2x: {ok(mem_r / mem_p <= 2)}",
        ),
        (
            f"first touch of {a.entities:,} hosted aggregates (concurrent)",
            f"{touch_r:.1f} s"
            + (f" ({touch_errors} failed at first, re-sent)" if touch_errors else ""),
            "",
            f"{touch_p:.1f} s",
            f"{touch_r / touch_p:.1f}x",
            f"≤ 2 s: {ok(touch_r <= 2)}",
        ),
    ]
    if any("cpu_ms_per_command" in r.get("w2_hosted_on", {}) for r in rs):
        cpu_r, cpu_p = m("w2_hosted_on", "cpu_ms_per_command"), p("w2", "cpu_ms_per_command")
        cpu_w1 = m("w1_hosted_on", "cpu_ms_per_command"), p("w1", "cpu_ms_per_command")
        rows.append(
            (
                "CPU per command, W2 (W1), runtime processes without Cassandra",
                f"{cpu_r:.2f} ms ({cpu_w1[0]:.2f} ms)",
                "",
                f"{cpu_p:.2f} ms ({cpu_w1[1]:.2f} ms)",
                f"{cpu_r / cpu_p:.1f}x",
                "",
            )
        )
    limits = [
        (
            "plain insert p50 (one ~111-byte event row, sequential)",
            f"{lim['insert_p50_ms']:.2f} ms",
        ),
        ("IF NOT EXISTS insert p50", f"{lim['insert_if_not_exists_p50_ms']:.2f} ms"),
        ("plain inserts/s, 50 in flight", f"{lim['inserts_per_s_50_in_flight']:,.0f}"),
        ("bare Ray actor call p50", f"{lim['bare_ray_call_p50_ms']:.2f} ms"),
        ("W4 goal: bare call + plain insert + 0.5 ms", f"{floor:.2f} ms"),
    ]
    medians = {
        "w1": [w1h, w1d, w1o, w1p],
        "w2": [w2h, w2o, w2p, w2h99, w2p99],
        "w4_p50_ms": [w4h, w4o, w4d, w4p],
        "w3_ms": [w3h, w3d, w3p],
        "memory_mib": [mem_r, mem_p],
        "first_touch_s": [touch_r, touch_p],
        "limits": lim,
        "w4_floor_ms": floor,
    }
    return [rows, limits], medians


def render(rows: list, limits: list, spread: str) -> str:
    head = (
        "workload",
        "raysource (guard on)",
        "raysource (guard off)",
        "Pekko",
        "raysource / Pekko",
        "goal",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| limit, measured in the same run from Python | median |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in limits]
    return "\n".join(lines) + "\n" + spread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default=None, help="host:port of Cassandra (default: select)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--callers", type=int, default=50)
    ap.add_argument("--entities", type=int, default=1000)
    ap.add_argument("--sequential", type=int, default=1000)
    ap.add_argument("--recovery-events", type=int, default=10000)
    ap.add_argument("--recoveries", type=int, default=3)
    ap.add_argument("--keyspace-prefix", default="peer")
    ap.add_argument("--out", default=None, help="also write the run's JSON here")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any side or workload failed (even if re-run fine)",
    )
    ap.add_argument(
        "--per-append",
        action="store_true",
        help="raysource also runs W2/W4 with guard='per-append' (in the JSON)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        default=None,
        help="no run: the table over the rounds of these peer-bench-*.json files",
    )
    a = ap.parse_args(argv)
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        for k, v in runs[0]["args"].items():  # the workload sizes of the runs
            if k not in ("merge", "rounds"):
                setattr(a, k, v)
        rs = [r for run in runs for r in run["raysource_rounds"]]
        pk = [r for run in runs for r in run["pekko_rounds"]]
        (rows, limits), _ = table(rs, pk, a)
        print(
            render(
                rows,
                limits,
                f"\nmedians of {len(rs)}/{len(pk)} raysource/Pekko rounds "
                f"from {len(runs)} runs: {', '.join(a.merge)}",
            )
        )
        return 0

    cp = build_pekko()
    source = select_cassandra(a.contact, say=print)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = ROOT / "results" / f"peer-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    rs: list[dict] = []
    pk: list[dict] = []
    failed: list[str] = []
    t0 = time.monotonic()
    try:
        for i in range(a.rounds):
            order = ("raysource", "pekko") if i % 2 == 0 else ("pekko", "raysource")
            for side in order:
                out = work / f"round{i + 1}-{side}.json"
                print(
                    f"round {i + 1}/{a.rounds}: {side} ... ({time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
                for attempt in (1, 2):  # a loaded machine: Ray or the JVM may fail to start
                    try:
                        if side == "raysource":
                            rs.append(run_raysource(source.contact_point, out, a))
                        else:
                            pk.append(run_pekko(cp, source.contact_point, out, a))
                        break
                    except (subprocess.SubprocessError, OSError, ValueError) as exc:
                        why = (
                            f"exit code {exc.returncode}"
                            if isinstance(exc, subprocess.CalledProcessError)
                            else repr(exc)
                        )
                        failed.append(f"round {i + 1} {side} (attempt {attempt}): {why[:300]}")
                        print(f"round {i + 1}: {side} FAILED ({why}), see above", flush=True)
    finally:
        source.release()
    if not rs or not pk:
        print("no complete side to compare:\n  " + "\n  ".join(failed))
        return 1
    (rows, limits), medians = table(rs, pk, a)
    load = [r["loadavg_start"][0] for r in rs] + [r["loadavg_end"][0] for r in rs]
    spread = (
        f"\nmedians of {len(rs)}/{len(pk)} complete raysource/Pekko rounds of {a.rounds}"
        f" (alternating order), {time.monotonic() - t0:.0f} s;"
        f" 1-min load average seen by the raysource side {min(load):.1f}-{max(load):.1f} "
        f"on {__import__('os').cpu_count()} cores (shared machine: read the ratios)"
    )
    failures = failed + [
        f"round {i + 1} {k}: {v['error']}"
        for i, r in enumerate(rs)
        for k, v in r.items()
        if isinstance(v, dict) and "error" in v
    ]
    if failures:
        spread += (
            "\nfailures (a failed side is re-run once; a failed workload is left out "
            "of the medians):\n  " + "\n  ".join(failures)
        )
    text = render(rows, limits, spread)
    print("\n" + text)
    path = ROOT / "results" / f"peer-bench-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "args": vars(a),
                "contact": source.contact_point,
                "medians": medians,
                "table": text,
                "failures": failures,
                "raysource_rounds": rs,
                "pekko_rounds": pk,
            },
            indent=2,
        )
    )
    if a.out:
        Path(a.out).write_text(path.read_text())
    print(f"all figures: {path}")
    return 1 if a.strict and failures else 0


if __name__ == "__main__":
    sys.exit(main())
