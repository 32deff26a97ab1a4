"""Cost of idempotency keys (issue 15): sequential ``ask`` latency with and without keys, on the
in-memory journal and on Cassandra, through the real AggregateHost/EntityCore (no Ray: the
difference is what the keys add — a uuid, the reply's encoding into the first event's
metadata, its bytes in the append, the table). Rounds alternate keys off/on so load drift on a
shared machine hits both alike.

    .venv/bin/python benchmarks/idempotency_bench.py [--cassandra HOST:PORT] [-n 2000] [--ray]

``--ray``: the same through Ray (``EntityRef.ask`` to a dedicated host actor on the in-memory
store, local Ray), keys on (the default) vs a copy of the type with keys off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from benchmarks import ray_start
from raysource.examples.ledger import LEDGER, Append
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.host import AggregateHost
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

SER = serialization_for(LEDGER, StoreSpec())


async def _round(host: AggregateHost, eid: str, n: int, keyed: bool) -> list[float]:
    out = []
    for i in range(n):
        cmd = Append(f"op{i}", 1)
        if keyed:
            cmd = Keyed(cmd, uuid.uuid4().hex)
        t = time.perf_counter()
        await host.ask(eid, cmd)
        out.append(time.perf_counter() - t)
    return out


async def bench(journal, snapshots, n: int, rounds: int = 4) -> dict[str, list[float]]:
    host = AggregateHost(LEDGER, journal, snapshots, SER)
    lat: dict[str, list[float]] = {"off": [], "on": []}
    eids = {k: f"bench-{k}-{uuid.uuid4().hex[:6]}" for k in lat}
    for k in lat:  # warm up both aggregates
        await _round(host, eids[k], 20, k == "on")
    for r in range(rounds):
        for k in ("off", "on") if r % 2 == 0 else ("on", "off"):
            lat[k] += await _round(host, eids[k], n // rounds, k == "on")
    await host.close()
    return lat


def report(name: str, lat: dict[str, list[float]], into: dict | None = None) -> None:
    p50 = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
    p99 = {k: sorted(v)[int(len(v) * 0.99)] * 1e6 for k, v in lat.items()}
    if into is not None:
        into[name] = {
            "n": len(lat["on"]),
            "p50_us": p50,
            "p99_us": p99,
            "p50_on_over_off": p50["on"] / p50["off"],
        }
    print(
        f"{name}: n={len(lat['on'])} p50 off {p50['off']:.0f} us, on {p50['on']:.0f} us "
        f"(ratio {p50['on'] / p50['off']:.3f}); p99 off {p99['off']:.0f} us, "
        f"on {p99['on']:.0f} us"
    )


def bench_ray(n: int, rounds: int = 4) -> dict[str, list[float]]:
    import dataclasses

    import ray

    from raysource.runtime.actors.refs import EntityRef
    from raysource.runtime.aggregate import IdempotencyPolicy
    from raysource.testing.local_resolver import LocalResolver

    ray_start.init(
        f"ikbench-{uuid.uuid4().hex[:6]}",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    types = {
        "on": LEDGER,
        "off": dataclasses.replace(LEDGER, idempotency=IdempotencyPolicy(enabled=False)),
    }
    resolver = LocalResolver(
        f"ikb{uuid.uuid4().hex[:6]}", StoreSpec(), placement={LEDGER.name: "dedicated"}
    )
    refs = {
        k: EntityRef(t, f"bench-{k}-{uuid.uuid4().hex[:6]}", resolver) for k, t in types.items()
    }
    lat: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for ref in refs.values():  # warm up: actor start, first recovery
            for i in range(50):
                ref.ask(Append(f"w{i}", 1), timeout=60)
        for r in range(rounds):
            for k in ("off", "on") if r % 2 == 0 else ("on", "off"):
                for i in range(n // rounds):
                    t = time.perf_counter()
                    refs[k].ask(Append(f"r{r}-{i}", 1), timeout=60)
                    lat[k].append(time.perf_counter() - t)
    finally:
        resolver.kill_all()
        ray.shutdown()
    return lat


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cassandra", default=None)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    figures: dict = {}
    if a.ray:
        report("ray (in-memory store)", bench_ray(a.n), figures)
    report("in-memory", await bench(InMemoryJournal(), InMemorySnapshotStore(), a.n), figures)
    if a.cassandra:
        from raysource.journal.cassandra.config import CassandraConfig
        from raysource.journal.cassandra.journal import CassandraJournal
        from raysource.snapshots.cassandra import CassandraSnapshotStore

        host, port = a.cassandra.rsplit(":", 1)
        cfg = CassandraConfig(contact_points=(host,), port=int(port), keyspace="raysource_ikbench")
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        snaps = CassandraSnapshotStore(journal.session, cfg)
        try:
            report("cassandra", await bench(journal, snaps, max(a.n // 4, 100)), figures)
        finally:
            await journal.close()
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
