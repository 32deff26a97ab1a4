"""Host layout benchmark: W2 of the peer benchmark (1,000 hosted aggregates, 50 callers at
random, guard on) for several host-actor layouts, each in its own process and its own local
Ray instance, rounds in alternating order, in one run; prints medians per layout.

A layout is ``<label>=[<hosts_per_node>][@<dir>]``: shared host actors per node (the type has
32 shards, so 32 is one process per shard; empty: the code's default), on the code of this
checkout or, with ``@<dir>``, on another copy of the code (e.g. ``git archive`` of the commit
before, arranged as an installed ``raysource`` package under ``<dir>``, so both sides of a
change run in one run, unaffected by uncommitted work in the tree). Figures per layout:
cold first touch of the 1,000 aggregates (host processes start inside it), commands/s,
p50/p99, RSS (and PSS) of the whole process tree right after W2, host actors, and the
resolver's region round trips. ``--pekko``: each round also runs the Pekko program of
``benchmarks/peer`` (all its workloads, short; its W2 figures and JVM RSS are printed beside).

  python -m benchmarks.peer.hosts_layout --layouts before=@/tmp/old,32=32,2=2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


def child(args: argparse.Namespace) -> None:
    import ray

    from benchmarks.peer.aggregate import PAYLOAD, PEER, Add
    from benchmarks.peer.raysource_side import init_ray, tree_rss, w2
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.system import System

    config = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace)
    init_ray(f"layout-{uuid.uuid4().hex[:6]}")
    boot = System.start(
        f"lboot{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[PEER],
    )
    boot.entity(PEER, "boot").ask(Add(PAYLOAD), timeout=120)
    boot.shutdown()
    settings = {"peer": {"hosts_per_node": args.hosts}} if args.hosts else {}
    system = System.start(
        f"layout{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(config),
        types=[PEER],
        placement={"peer": "hosted"},
        host_settings=settings,
    )
    try:
        out = w2(system, args.entities, args.callers, args.warmup, args.seconds)
        out["memory"] = tree_rss()
        out["host_actors"] = sum(
            1
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"{system.name}:")
            and ":region:" not in a["name"]
            and ":timers:" not in a["name"]
        )
        out["region_round_trips"] = getattr(system.resolver, "activations", None)
        out["coordinator_round_trips"] = system.resolver.resolves
        out["code"] = sys.modules[System.__module__].__file__
    finally:
        system.shutdown()
        ray.shutdown()
    Path(args.out).write_text(json.dumps(out))


def run_layout(label: str, spec: str, a: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ)
    hosts, _, code = spec.partition("@")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.peer.hosts_layout",
        "--child",
        "--out",
        str(out),
        "--contact",
        a.contact,
        "--keyspace",
        a.keyspace,
        "--seconds",
        str(a.seconds),
        "--warmup",
        str(a.warmup),
        "--entities",
        str(a.entities),
        "--callers",
        str(a.callers),
    ]
    # that copy's raysource first; cwd elsewhere so ROOT's raysource/ folder does not win
    env["PYTHONPATH"] = os.pathsep.join([p for p in (code, str(ROOT)) if p])
    if hosts:
        cmd += ["--hosts", hosts]
    subprocess.run(cmd, check=True, cwd="/tmp", env=env, timeout=900)
    return json.loads(out.read_text())


def run_pekko_w2(a: argparse.Namespace, out: Path) -> dict:
    """One run of the Pekko program (``benchmarks.peer.run``'s; short W1/W4/W3 beside W2)."""
    from benchmarks.peer.run import build_pekko, run_pekko

    args = argparse.Namespace(
        keyspace_prefix="peer",
        seconds=a.seconds,
        warmup=a.warmup,
        callers=a.callers,
        entities=a.entities,
        sequential=200,
        recovery_events=1000,
        recoveries=1,
    )
    res = run_pekko(build_pekko(), a.contact, out, args)
    return {**res["w2"], "rss": res["rss_after_w2_bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="peer_raysource")
    ap.add_argument("--layouts", default="32=32,2=2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--entities", type=int, default=1000)
    ap.add_argument("--callers", type=int, default=50)
    ap.add_argument("--hosts", type=int, default=0)
    ap.add_argument("--pekko", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    layouts = [tuple(x.split("=", 1)) for x in a.layouts.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, list[dict]] = {label: [] for label, _ in layouts}
    pekko: list[dict] = []
    for r in range(a.rounds):
        order = layouts if r % 2 == 0 else layouts[::-1]
        if a.pekko:  # first in even rounds, last in odd ones
            order = [("pekko", ""), *order] if r % 2 == 0 else [*order, ("pekko", "")]
        for label, spec in order:
            if label == "pekko":
                pekko.append(run_pekko_w2(a, Path(f"/tmp/hosts-layout-{stamp}-pekko-{r}.json")))
                w = pekko[-1]
                print(
                    f"round {r} pekko: {w['commands_per_s']:.0f} cmd/s p50 {w['p50_ms']:.1f} "
                    f"p99 {w['p99_ms']:.1f} ms, first touch {w['first_touch_s']:.2f} s, RSS "
                    f"{w['rss'] / MiB:.0f} MiB, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                continue
            out = Path(f"/tmp/hosts-layout-{stamp}-{label}-{r}.json")
            res = run_layout(label, spec, a, out)
            results[label].append(res)
            print(
                f"round {r} {label}: {res['commands_per_s']:.0f} cmd/s p50 "
                f"{res['p50_ms']:.1f} p99 {res['p99_ms']:.1f} ms, first touch "
                f"{res['first_touch_s']:.2f} s, RSS {res['memory']['rss_bytes'] / MiB:.0f} MiB "
                f"({res['memory']['processes']} procs), hosts {res['host_actors']}, region "
                f"round trips {res['region_round_trips']}, load {os.getloadavg()[0]:.1f}, "
                f"code {res['code']}",
                flush=True,
            )
    med = statistics.median
    print(
        f"\nmedians over {a.rounds} rounds ({a.entities} aggregates, {a.callers} callers, "
        f"{a.seconds:.0f} s windows):"
    )
    print(
        f"{'layout':>8} {'cmd/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'touch s':>8} "
        f"{'RSS MiB':>8} {'PSS MiB':>8} {'hosts':>6} {'errors':>6}"
    )
    for label, rs in results.items():
        print(
            f"{label:>8} {med(x['commands_per_s'] for x in rs):7.0f} "
            f"{med(x['p50_ms'] for x in rs):7.1f} {med(x['p99_ms'] for x in rs):7.1f} "
            f"{med(x['first_touch_s'] for x in rs):8.2f} "
            f"{med(x['memory']['rss_bytes'] for x in rs) / MiB:8.0f} "
            f"{med(x['memory']['pss_bytes'] for x in rs) / MiB:8.0f} "
            f"{med(x['host_actors'] for x in rs):6.0f} "
            f"{sum(x['errors'] + x['first_touch_errors'] for x in rs):6d}"
        )
    if pekko:
        print(
            f"{'pekko':>8} {med(x['commands_per_s'] for x in pekko):7.0f} "
            f"{med(x['p50_ms'] for x in pekko):7.1f} {med(x['p99_ms'] for x in pekko):7.1f} "
            f"{med(x['first_touch_s'] for x in pekko):8.2f} "
            f"{med(x['rss'] for x in pekko) / MiB:8.0f}"
        )
    path = ROOT / "results" / f"hosts-layout-{stamp}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**results, "pekko": pekko}, indent=2))
    print(f"raw: {path}")


if __name__ == "__main__":
    main()
