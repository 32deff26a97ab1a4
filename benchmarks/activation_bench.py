"""Activation benchmark: many aggregates activated at once in one host (no Ray), on Cassandra,
with the bulk path (``raysource.runtime.bulk_recovery``) and without it, side by side in one
run (alternating rounds), so the ratio holds on a shared, loaded machine.

Per round and path: N never-written aggregates get one command each, all at once (a first
touch); then N aggregates with ``--events`` events each are passivated and touched again (a
recovery of many). Reported: wall seconds and this process's CPU seconds (driver + runtime)
per activation; Cassandra's own CPU is not in it (a shared node), so the wall ratio is the
one to read, CPU the robust one.

Usage: python -m benchmarks.activation_bench [--contact 127.0.0.1:9042] [--n 300] [--rounds 2]

``--pool``: instead, first touches of ``--n`` *dedicated* aggregates through a real ``System``
on Ray, without and with a warm pool of ``--n`` hosts, side by side (``benchmarks.pool_bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from cassandra.cluster import Cluster

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.runtime.host import AggregateHost
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

SER = serialization_for(LEDGER, StoreSpec())


async def _touch(host: AggregateHost, ids: list[str], tag: str) -> None:
    outs = await asyncio.gather(
        *(host.ask(e, Append(f"{tag}-{e}", 1)) for e in ids), return_exceptions=True
    )
    bad = [o for o in outs if isinstance(o, BaseException)]
    assert not bad, bad[:3]


async def one_round(journal: CassandraJournal, n: int, events: int, bulk: bool) -> dict:
    host = AggregateHost(
        LEDGER, journal, InMemorySnapshotStore(), SER, bulk_activations=bulk, max_in_flight=None
    )
    run = uuid.uuid4().hex[:8]
    out: dict[str, float] = {}
    try:
        fresh = [f"b{run}-{i}" for i in range(n)]
        c0, t0 = time.process_time(), time.perf_counter()
        await _touch(host, fresh, "t")
        out["first_touch_s"] = time.perf_counter() - t0
        out["first_touch_cpu_ms_per"] = (time.process_time() - c0) * 1000 / n
        for k in range(1, events):  # fill: events per aggregate (outside the clock)
            await _touch(host, fresh, f"f{k}")
        await host.handoff(lambda e: True)  # passivate all
        c0, t0 = time.perf_counter(), time.perf_counter()
        c0 = time.process_time()
        await _touch(host, fresh, "r")
        out["recover_s"] = time.perf_counter() - t0
        out["recover_cpu_ms_per"] = (time.process_time() - c0) * 1000 / n
    finally:
        await host.close()
    return out


async def main_async(args: argparse.Namespace) -> None:
    host, port = args.contact.split(":")
    ks = f"bench_act_{uuid.uuid4().hex[:8]}"
    admin = Cluster([host], port=int(port), protocol_version=5)
    adm = admin.connect()
    adm.execute(
        f"CREATE KEYSPACE {ks} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    cfg = CassandraConfig(contact_points=(host,), port=int(port), keyspace=ks)
    session = await CassandraSession.open(cfg, create_schema=True)
    results: dict[bool, list[dict]] = {True: [], False: []}
    try:
        journal = CassandraJournal(session, cfg)
        await journal._prepare()
        await one_round(journal, 20, 2, True)  # warm-up (prepared statements, pools)
        for _ in range(args.rounds):
            for bulk in (False, True):
                results[bulk].append(await one_round(journal, args.n, args.events, bulk))
    finally:
        await session.close()
        adm.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        admin.shutdown()
    print(f"{args.n} aggregates, {args.events} events each, {args.rounds} rounds (median)")
    figures: dict[str, dict[str, float]] = {}
    for key in ("first_touch_s", "first_touch_cpu_ms_per", "recover_s", "recover_cpu_ms_per"):
        one = statistics.median(r[key] for r in results[False])
        bulk = statistics.median(r[key] for r in results[True])
        print(f"{key:24s} one-by-one {one:8.3f}  bulk {bulk:8.3f}  ratio {one / bulk:5.2f}x")
        figures[key] = {"one_by_one": one, "bulk": bulk, "ratio": one / bulk}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"aggregates": args.n, **figures}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contact", default="127.0.0.1:9042")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--events", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.add_argument("--pool", action="store_true", help="dedicated first touches, warm pool")
    args = p.parse_args()
    if args.pool:
        from benchmarks import pool_bench

        pool_bench.run(args.contact, args.n, args.rounds, args.out)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
