"""Runtime benchmark: aggregates as Ray actors on Cassandra beside the raw limits, in one run.

* hot aggregate: commands/s on one show from pipelining callers (group commit) vs
  1 / (single journal append latency), dedicated and hosted; the same via ``ask_many`` batches
  (one synchronous caller, and pipelining callers);
* many aggregates: commands/s on N shows vs raw cassandra-driver inserts of the same event rows
  (plain and ``IF NOT EXISTS``, the guard's price); the same via ``ask_many`` batches;
* ask round trip p50/p99 (write and read-only) vs a bare Ray actor call + one journal append;
* activation latency and memory (USS) per active aggregate: dedicated vs hosted vs a bare Ray
  actor (this is the warm-pool question of DESIGN.md "activation cost").

Pipelined measurements keep at most ``--window`` commands in flight per aggregate (default 80%
of the product's mailbox bound, ``HostSpec.max_mailbox`` = 1,000, stated in the output): beyond
the bound a command is refused (``OverloadedError``, not applied); refusals are counted and
printed as a figure, never a traceback. Any other error ends the benchmark (a real failure).

Usage: python -m benchmarks.runtime_bench [--contact host:port] [--window 800] [--scale 1]
Prints a table and writes results/runtime_bench.json. Read the ratios; absolute figures depend
on the machine (2 cores here, Ray + Cassandra + the driver all on it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import socket
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import ray
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args

from benchmarks import ray_start
from raysource.examples.seats import (
    SHOW,
    CreateShow,
    GetShow,
    ReserveSeat,
    SeatReserved,
    seat_label,
)
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal, to_us
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.serialization import Serialization
from raysource.runtime.actors.host_actor import HostSpec
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.errors import OverloadedError
from raysource.runtime.stores import StoreSpec
from raysource.testing.local_resolver import LocalResolver

BENCH_SHOW = dataclasses.replace(SHOW, name="benchshow", number_of_shards=2)
# the product's bound on calls in flight per aggregate (HostSpec.max_mailbox, default kept)
MAILBOX_BOUND = {f.name: f.default for f in dataclasses.fields(HostSpec)}["max_mailbox"]


@ray.remote(num_cpus=0.01, max_concurrency=1000)
class Bare:
    """A bare async Ray actor: the floor under every host actor figure."""

    async def ping(self) -> str:
        return "pong"

    async def memory(self) -> dict:
        import psutil

        m = psutil.Process().memory_full_info()
        return {"rss": m.rss, "uss": m.uss}


# the journal's events table (epoch 0: the raw rows are what an unguarded writer would store)
EVENTS_TABLE = CassandraConfig.events_table  # the dataclass default, "messages_v2"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 2)


# --------------------------------------------------------------------------- raw limits


async def append_latencies(config: CassandraConfig, n: int) -> list[float]:
    """Sequential one-event appends (guard on) to one persistence id, from this process."""
    journal = await CassandraJournal.connect(config)
    ser = Serialization()
    SHOW.register_types(ser)
    pid = f"bench|append-{uuid.uuid4().hex[:8]}"
    out = []
    try:
        for i in range(1, n + 1):
            sid, man, payload = ser.encode(SeatReserved(seat_label(i % 1000), "alice"))
            ev = StoredEvent(
                pid, i, payload, man, sid, datetime.now(UTC), "bench", frozenset({"show"})
            )
            t = time.perf_counter()
            await journal.append([ev])
            out.append(time.perf_counter() - t)
    finally:
        await journal.close()
    return out


def raw_inserts(session, ks: str, n: int, conc: int, lwt: bool) -> float:
    ser = Serialization()
    SHOW.register_types(ser)
    sid, man, payload = ser.encode(SeatReserved("A1", "customer-0001"))
    stmt = session.prepare(
        f"INSERT INTO {ks}.{EVENTS_TABLE} (persistence_id, partition_nr, sequence_nr, epoch, "
        "writer_epoch, timestamp_us, writer_id, ser_id, manifest, payload, tags, meta) "
        "VALUES (?,?,?,0,0,?,?,?,?,?,?,?)" + (" IF NOT EXISTS" if lwt else "")
    )
    run = uuid.uuid4().hex[:6]
    ts = to_us(datetime.now(UTC))
    args = [
        (f"raw-{run}-{i % conc}", 0, i // conc + 1, ts, "w", sid, man, payload, {"show"}, None)
        for i in range(n)
    ]
    t0 = time.perf_counter()
    results = execute_concurrent_with_args(
        session, stmt, args, concurrency=conc, raise_on_first_error=True
    )
    dt = time.perf_counter() - t0
    assert all(ok for ok, _ in results)
    return n / dt


# --------------------------------------------------------------------------- runtime figures


class Outcomes:
    """Counts the outcomes of a measurement: refusals by the mailbox bound are a figure
    (``OverloadedError``: not applied); any other error is a real failure and is raised."""

    def __init__(self) -> None:
        self.ok = 0
        self.overloaded = 0

    def add(self, outcome: object) -> None:
        if isinstance(outcome, OverloadedError):
            self.overloaded += 1
        elif isinstance(outcome, BaseException):
            raise outcome
        elif not isinstance(outcome, SeatReserved):
            raise AssertionError(f"unexpected reply {outcome!r}")
        else:
            self.ok += 1


def _settle(ref: object, outcomes: Outcomes) -> None:
    """One raw ``submit`` ObjectRef's outcome into ``outcomes``."""
    try:
        outcomes.add(ray.get(ref))
    except ray.exceptions.RayTaskError as err:
        outcomes.add(err.as_instanceof_cause())
    except OverloadedError as err:
        outcomes.add(err)


def hot_aggregate(resolver: LocalResolver, callers: int, per_caller: int, window: int) -> dict:
    """``callers`` refs to one show pipelining single commands (raw ``submit``), at most
    ``window`` in flight at once (below the mailbox bound)."""
    show = f"hot-{uuid.uuid4().hex[:8]}"
    refs = [EntityRef(BENCH_SHOW, show, resolver) for _ in range(callers)]
    refs[0].ask(CreateShow(callers * per_caller))
    before = ray.get(refs[0].actor.info.remote())["stats"]
    order = [(c, i) for i in range(per_caller) for c in range(callers)]
    outcomes, pending = Outcomes(), []
    t0 = time.perf_counter()
    for c, i in order:
        if len(pending) >= window:
            done, pending = ray.wait(pending, num_returns=1, fetch_local=False)
            _settle(done[0], outcomes)
        pending.append(refs[c].submit(ReserveSeat(seat_label(c * per_caller + i), f"c{c}")))
    for ref in pending:
        _settle(ref, outcomes)
    dt = time.perf_counter() - t0
    after = ray.get(refs[0].actor.info.remote())["stats"]
    writes = after["writes"] - before["writes"]
    n = callers * per_caller
    return {
        "commands": n,
        "commands_per_s": outcomes.ok / dt,
        "writes": writes,
        "commands_per_write": outcomes.ok / max(1, writes),
        "window": window,
        "overloaded": outcomes.overloaded,
    }


def many_aggregates(resolver: LocalResolver, entities: int, per_entity: int) -> dict:
    refs = [
        EntityRef(BENCH_SHOW, f"many-{uuid.uuid4().hex[:8]}", resolver) for _ in range(entities)
    ]
    ray.get([r.submit(CreateShow(per_entity)) for r in refs])  # activation outside the clock
    t0 = time.perf_counter()
    pending = [r.submit(ReserveSeat(seat_label(i), "c")) for i in range(per_entity) for r in refs]
    outcomes = Outcomes()
    for ref in pending:
        _settle(ref, outcomes)
    dt = time.perf_counter() - t0
    return {
        "commands": len(pending),
        "commands_per_s": outcomes.ok / dt,
        "overloaded": outcomes.overloaded,
    }


def _reservations(first: int, n: int, who: str) -> list[ReserveSeat]:
    return [ReserveSeat(seat_label(first + i), who) for i in range(n)]


def _count(parts: list[list]) -> Outcomes:
    outcomes = Outcomes()
    for part in parts:
        for o in part:
            outcomes.add(o)
    return outcomes


async def _windowed(sends: list, window_batches: int) -> list[list]:
    """Await ``sends`` (coroutine factories, one ``ask_many_async`` batch each), at most
    ``window_batches`` in flight at once; the outcomes in order."""
    gate = asyncio.Semaphore(window_batches)

    async def one(send) -> list:  # noqa: ANN001
        async with gate:
            return await send()

    return await asyncio.gather(*(one(s) for s in sends))


def hot_batched(
    resolver: LocalResolver, callers: int, batches: int, batch: int, window: int
) -> dict:
    """One show fed by ``ask_many``: one synchronous caller (batch after batch), then
    ``callers`` refs pipelining their batches (``ask_many_async``), at most ``window``
    commands in flight to the show at once (below the mailbox bound)."""
    show = f"hotb-{uuid.uuid4().hex[:8]}"
    refs = [EntityRef(BENCH_SHOW, show, resolver) for _ in range(callers)]
    n_sync, n_pipe = batches * batch, callers * batches * batch
    refs[0].ask(CreateShow(n_sync + n_pipe))
    info = lambda: ray.get(refs[0].actor.info.remote())["stats"]  # noqa: E731
    before = info()
    t0 = time.perf_counter()
    sync = _count(
        [refs[0].ask_many(_reservations(b * batch, batch, "sync")) for b in range(batches)]
    )
    dt_sync = time.perf_counter() - t0
    mid = info()

    def send(c: int, b: int):  # noqa: ANN202
        cmds = _reservations(n_sync + (c * batches + b) * batch, batch, f"c{c}")
        return lambda: refs[c].ask_many_async(cmds)

    sends = [send(c, b) for b in range(batches) for c in range(callers)]
    t0 = time.perf_counter()
    pipe = _count(asyncio.run(_windowed(sends, max(1, window // batch))))
    dt_pipe = time.perf_counter() - t0
    after = info()
    return {
        "batch": batch,
        "window": max(1, window // batch) * batch,
        "sync_commands_per_s": sync.ok / dt_sync,
        "sync_commands_per_write": sync.ok / max(1, mid["writes"] - before["writes"]),
        "pipelined_callers": callers,
        "pipelined_commands_per_s": pipe.ok / dt_pipe,
        "pipelined_commands_per_write": pipe.ok / max(1, after["writes"] - mid["writes"]),
        "overloaded": sync.overloaded + pipe.overloaded,
    }


def many_batched(
    resolver: LocalResolver, entities: int, per_entity: int, batch: int, window: int
) -> dict:
    """``entities`` shows, each fed by its own ref with pipelined ``ask_many_async`` batches,
    at most ``window`` commands in flight per show."""
    refs = [
        EntityRef(BENCH_SHOW, f"manyb-{uuid.uuid4().hex[:8]}", resolver) for _ in range(entities)
    ]
    ray.get([r.submit(CreateShow(per_entity)) for r in refs])  # activation outside the clock

    def send(r: EntityRef, i: int):  # noqa: ANN202
        cmds = _reservations(i, batch, "c")
        return lambda: r.ask_many_async(cmds)

    async def run() -> list[list]:
        per_show = [
            _windowed([send(r, i) for i in range(0, per_entity, batch)], max(1, window // batch))
            for r in refs
        ]
        return [part for parts in await asyncio.gather(*per_show) for part in parts]

    t0 = time.perf_counter()
    outcomes = _count(asyncio.run(run()))
    dt = time.perf_counter() - t0
    return {
        "commands": outcomes.ok + outcomes.overloaded,
        "batch": batch,
        "commands_per_s": outcomes.ok / dt,
        "overloaded": outcomes.overloaded,
    }


def round_trips(resolver: LocalResolver, n: int) -> dict:
    ref = EntityRef(BENCH_SHOW, f"rt-{uuid.uuid4().hex[:8]}", resolver)
    ref.ask(CreateShow(n + 10))
    writes, reads = [], []
    for i in range(n):
        t = time.perf_counter()
        ref.ask(ReserveSeat(seat_label(i), "c"))
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref.ask(GetShow())
        reads.append(time.perf_counter() - t)
    return {
        "write_p50_ms": ms(pct(writes, 50)),
        "write_p99_ms": ms(pct(writes, 99)),
        "read_p50_ms": ms(pct(reads, 50)),
        "read_p99_ms": ms(pct(reads, 99)),
    }


def bare_calls(n: int, creates_n: int = 5) -> tuple[dict, list]:
    times = []
    creates = []
    actors = []
    for _ in range(creates_n):
        t = time.perf_counter()
        a = Bare.remote()
        ray.get(a.ping.remote())
        creates.append(time.perf_counter() - t)
        actors.append(a)
    for _ in range(n):
        t = time.perf_counter()
        ray.get(actors[0].ping.remote())
        times.append(time.perf_counter() - t)
    mem = ray.get(actors[0].memory.remote())
    return (
        {
            "call_p50_ms": ms(pct(times, 50)),
            "call_p99_ms": ms(pct(times, 99)),
            "create_ms": ms(statistics.median(creates)),
            "uss_mib": mem["uss"] / 2**20,
            "rss_mib": mem["rss"] / 2**20,
        },
        actors,
    )


def dedicated_activation(resolver: LocalResolver, n: int) -> dict:
    times, uss, rss, recov, opens = [], [], [], [], []
    for _ in range(n):
        ref = EntityRef(BENCH_SHOW, f"act-{uuid.uuid4().hex[:8]}", resolver)
        t = time.perf_counter()
        ref.ask(GetShow())  # actor creation + store connect + recovery + one call
        times.append(time.perf_counter() - t)
        info = ray.get(ref.actor.info.remote())
        uss.append(info["uss"])
        rss.append(info["rss"])
        recov.append(info["recovery"]["recovery_s_total"])
        opens.append(info["stores_open_s"])
    return {
        "activation_ms": ms(statistics.median(times)),
        "recovery_ms": ms(statistics.median(recov)),
        "stores_open_ms": ms(statistics.median(opens)),
        "uss_mib_per_aggregate": statistics.median(uss) / 2**20,
        "rss_mib": statistics.median(rss) / 2**20,
    }


def hosted_activation(resolver: LocalResolver, n: int) -> dict:
    # all on shard 0 of one hosted actor: warm it, then measure entity activations inside it
    from raysource.runtime.shard_id import shard_of

    ids = []
    while len(ids) < n + 1:
        e = f"hact-{uuid.uuid4().hex[:8]}"
        if shard_of(e, BENCH_SHOW.number_of_shards) == 0:
            ids.append(e)
    first = EntityRef(BENCH_SHOW, ids[0], resolver)
    t = time.perf_counter()
    first.ask(GetShow())
    cold = time.perf_counter() - t
    base = ray.get(first.actor.info.remote())["uss"]
    times = []
    for e in ids[1:]:
        ref = EntityRef(BENCH_SHOW, e, resolver)
        t = time.perf_counter()
        ref.ask(ReserveSeat("A1", "c"))  # activation + recovery + one write, like a real first use
        times.append(time.perf_counter() - t)
    info = ray.get(first.actor.info.remote())
    return {
        "cold_actor_ms": ms(cold),
        "activation_ms": ms(statistics.median(times)),
        "active": info["active"],
        "uss_kib_per_aggregate": (info["uss"] - base) / max(1, n) / 1024,
        "actor_uss_mib": info["uss"] / 2**20,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contact", default=os.environ.get("RAYSOURCE_CASSANDRA", "127.0.0.1:9042"))
    ap.add_argument(
        "--keyspace",
        default=None,
        help="default: a fresh keyspace for this run, dropped at its end",
    )
    ap.add_argument("--out", default="results/runtime_bench.json")
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--per-caller", type=int, default=250)
    ap.add_argument("--entities", type=int, default=8)
    ap.add_argument("--round-trips", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100, help="commands per ask_many batch")
    ap.add_argument(
        "--window",
        type=int,
        default=None,
        help="commands in flight per aggregate (default: 80%% of the mailbox bound)",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies the fixed counts (appends, inserts, batches, activations); "
        "e.g. 0.05 for a smoke run",
    )
    args = ap.parse_args()
    bound = MAILBOX_BOUND
    window = args.window or int(bound * 0.8)
    if bound is not None and window >= bound:
        ap.error(f"--window {window} must stay below the mailbox bound ({bound})")
    window = max(window, args.batch)

    def n(x: int, least: int = 2) -> int:
        return max(least, int(x * args.scale))

    keyspace = args.keyspace or f"bench_rt_{uuid.uuid4().hex[:8]}"
    config = CassandraConfig.from_contact(args.contact, keyspace=keyspace)
    asyncio.run(_create(config))
    # address="local": always a Ray instance of its own, never a cluster another process on
    # this host started (its workers would run that checkout's code)
    ray_start.init(
        f"raysource-bench-{uuid.uuid4().hex[:6]}",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    store = StoreSpec("cassandra", config)
    r: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ray": ray.__version__,
        },
        "mailbox_bound": bound,
        "window": window,
    }
    print(
        f"runtime benchmark: at most {window} commands in flight per aggregate (the "
        f"product's mailbox bound is {bound}; beyond it commands are refused, "
        "OverloadedError, counted as 'refused')",
        flush=True,
    )
    resolvers: list[LocalResolver] = []

    def resolver(placement: str) -> LocalResolver:
        res = LocalResolver(
            f"b{uuid.uuid4().hex[:6]}", store, placement={BENCH_SHOW.name: placement}
        )
        resolvers.append(res)
        return res

    def done() -> None:
        for res in resolvers:
            res.kill_all()
        resolvers.clear()

    t_start = time.perf_counter()
    try:
        lat = asyncio.run(append_latencies(config, n(200)))
        r["append"] = {
            "p50_ms": ms(pct(lat, 50)),
            "p99_ms": ms(pct(lat, 99)),
            "one_writer_limit_per_s": 1 / statistics.median(lat),
        }

        cluster = Cluster(
            list(config.contact_points),
            port=config.port,
            protocol_version=5,
            sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        session = cluster.connect()
        r["raw"] = {
            "insert_per_s": raw_inserts(session, config.keyspace, n(4000, 64), 64, False),
            "insert_lwt_per_s": raw_inserts(session, config.keyspace, n(2000, 64), 64, True),
        }
        cluster.shutdown()

        bare, bare_actors = bare_calls(args.round_trips, n(5, 1))
        r["bare_actor"] = bare
        for a in bare_actors:
            ray.kill(a)

        for placement in ("dedicated", "hosted"):
            res = resolver(placement)
            r[f"hot_{placement}"] = hot_aggregate(res, args.callers, args.per_caller, window)
            r[f"hot_batched_{placement}"] = hot_batched(
                res, args.callers, n(10, 1), args.batch, window
            )
            r[f"rtt_{placement}"] = round_trips(res, args.round_trips)
            done()
            r[f"many_{placement}"] = many_aggregates(resolver(placement), args.entities, n(150))
            done()
            r[f"many_batched_{placement}"] = many_batched(
                resolver(placement),
                args.entities,
                n(1000 // args.batch, 1) * args.batch,
                args.batch,
                window,
            )
            done()
        r["activation_dedicated"] = dedicated_activation(resolver("dedicated"), n(5, 1))
        done()
        r["activation_hosted"] = hosted_activation(resolver("hosted"), n(200))
        done()
    finally:
        done()
        ray.shutdown()
        if not args.keyspace:
            asyncio.run(_drop(config))
    r["wall_s"] = time.perf_counter() - t_start
    report(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))
    print(f"\nwrote {args.out}")


async def _create(config: CassandraConfig) -> None:
    journal = await CassandraJournal.connect(config, create_schema=True)
    await journal.close()


async def _drop(config: CassandraConfig) -> None:
    async with CassandraSession(config) as session:
        await session.execute(
            f"DROP KEYSPACE IF EXISTS {config.keyspace}", prepare=False, timeout=120.0
        )


def report(r: dict) -> None:
    limit = r["append"]["one_writer_limit_per_s"]
    rows = [
        (
            "single append (guard on) p50 / p99 ms",
            f"{r['append']['p50_ms']} / {r['append']['p99_ms']}",
            "",
        ),
        ("1 / append latency (one writer, no batching) /s", f"{limit:.0f}", "1.00"),
    ]
    for p in ("dedicated", "hosted"):
        h = r[f"hot_{p}"]
        rows.append(
            (
                f"hot aggregate {p}: cmds/s ({h['commands_per_write']:.1f} cmds/write)",
                f"{h['commands_per_s']:.0f}",
                f"{h['commands_per_s'] / limit:.2f} x limit",
            )
        )
        b = r[f"hot_batched_{p}"]
        rows.append(
            (
                f"  via ask_many x{b['batch']}, 1 sync caller "
                f"({b['sync_commands_per_write']:.1f} cmds/write)",
                f"{b['sync_commands_per_s']:.0f}",
                f"{b['sync_commands_per_s'] / limit:.2f} x limit, "
                f"{b['sync_commands_per_s'] / h['commands_per_s']:.1f} x single asks",
            )
        )
        rows.append(
            (
                f"  via ask_many x{b['batch']}, {b['pipelined_callers']} pipelining callers "
                f"({b['pipelined_commands_per_write']:.1f} cmds/write)",
                f"{b['pipelined_commands_per_s']:.0f}",
                f"{b['pipelined_commands_per_s'] / limit:.2f} x limit, "
                f"{b['pipelined_commands_per_s'] / h['commands_per_s']:.1f} x single asks",
            )
        )
    raw, raw_lwt = r["raw"]["insert_per_s"], r["raw"]["insert_lwt_per_s"]
    rows.append(("raw driver inserts /s (plain, 64 in flight)", f"{raw:.0f}", "1.00"))
    rows.append(("raw driver inserts /s (IF NOT EXISTS)", f"{raw_lwt:.0f}", f"{raw_lwt / raw:.2f}"))
    for p in ("dedicated", "hosted"):
        m = r[f"many_{p}"]["commands_per_s"]
        rows.append(
            (
                f"many aggregates {p}: cmds/s",
                f"{m:.0f}",
                f"{m / raw:.2f} x raw, {m / raw_lwt:.2f} x raw LWT",
            )
        )
        mb = r[f"many_batched_{p}"]
        rows.append(
            (
                f"  via ask_many x{mb['batch']}",
                f"{mb['commands_per_s']:.0f}",
                f"{mb['commands_per_s'] / raw:.2f} x raw, "
                f"{mb['commands_per_s'] / raw_lwt:.2f} x raw LWT, "
                f"{mb['commands_per_s'] / m:.1f} x single asks",
            )
        )
    b = r["bare_actor"]
    floor = b["call_p50_ms"] + r["append"]["p50_ms"]
    rows.append(("bare actor call p50 / p99 ms", f"{b['call_p50_ms']} / {b['call_p99_ms']}", ""))
    rows.append(("bare call + one append p50 ms (floor)", f"{floor:.2f}", "1.00"))
    for p in ("dedicated", "hosted"):
        t = r[f"rtt_{p}"]
        rows.append(
            (
                f"ask write {p} p50 / p99 ms",
                f"{t['write_p50_ms']} / {t['write_p99_ms']}",
                f"{t['write_p50_ms'] / floor:.2f} x floor",
            )
        )
        rows.append(
            (
                f"ask read-only {p} p50 / p99 ms",
                f"{t['read_p50_ms']} / {t['read_p99_ms']}",
                f"{t['read_p50_ms'] / b['call_p50_ms']:.2f} x bare call",
            )
        )
    d, h = r["activation_dedicated"], r["activation_hosted"]
    rows.append(("bare Ray actor create + first call ms", f"{b['create_ms']}", "1.00"))
    rows.append(
        (
            "dedicated activation ms (create+connect+recover)",
            f"{d['activation_ms']}",
            f"{d['activation_ms'] / b['create_ms']:.2f} x bare",
        )
    )
    rows.append(
        (
            "  of which Cassandra session connect ms",
            f"{d['stores_open_ms']}",
            f"{d['stores_open_ms'] / d['activation_ms']:.2f} of it",
        )
    )
    rows.append(("  of which recovery ms", f"{d['recovery_ms']}", ""))
    rows.append(
        (
            "hosted activation ms (in a warm host, + 1 write)",
            f"{h['activation_ms']}",
            f"{h['activation_ms'] / b['create_ms']:.3f} x bare",
        )
    )
    rows.append(("bare Ray actor USS MiB", f"{b['uss_mib']:.1f}", "1.00"))
    rows.append(
        (
            "dedicated USS MiB per aggregate",
            f"{d['uss_mib_per_aggregate']:.1f}",
            f"{d['uss_mib_per_aggregate'] / b['uss_mib']:.2f} x bare",
        )
    )
    rows.append(
        (
            f"hosted USS KiB per aggregate ({h['active']} active)",
            f"{h['uss_kib_per_aggregate']:.1f}",
            f"{h['uss_kib_per_aggregate'] / 1024 / b['uss_mib']:.4f} x bare",
        )
    )
    refused = sum(v.get("overloaded", 0) for v in r.values() if isinstance(v, dict))
    rows.append(
        (
            f"commands refused by the mailbox bound (OverloadedError), window {r['window']}",
            f"{refused}",
            f"window {r['window'] / r['mailbox_bound']:.2f} x bound {r['mailbox_bound']}",
        )
    )
    w = max(len(a) for a, _, _ in rows)
    print(f"\n{'figure':<{w}}  {'value':>14}  ratio")
    for a, v, ratio in rows:
        print(f"{a:<{w}}  {v:>14}  {ratio}")
    print(f"(wall {r['wall_s']:.0f} s, {r['machine']})")


if __name__ == "__main__":
    main()
