"""Read-side benchmark: end-to-end lag and projection throughput beside the raw tag read.

* lag: writers on many show aggregates (entity cores on the Cassandra journal, paced) reserve
  seats while the reservations-by-customer projection runs as a Ray actor; for every event the
  lag is (when its view batch was applied: the audit row's server-side ``now()``, ms
  resolution) - (when the command was acknowledged), both on this host's clock. The floor is
  the tag query's ``eventual_consistency_delay`` (0.5 s here, 5 s by default) plus the poll
  interval.
* throughput: the same events replayed through the projection after a reset (no-op handler,
  and the effectively-once view writer, which also writes the audit row used for the lag) vs a
  raw ``events_by_tag`` current query of them. The view writer applies one logged batch per
  event, sequentially: its rate is about 1 / (logged batch latency).

Usage: python benchmarks/projection_bench.py [--contact host:port] [--seconds 15]
Prints a table and writes results/projection_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray

from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.examples.reservations_view import VIEW_TABLE, reservations_projection
from raysource.examples.seats import SHOW, ReserveSeat, seat_label
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionHandler, ProjectionSettings, ProjectionSpec
from raysource.testing.testkit import AggregateTestKit
from raysource.snapshots.memory import InMemorySnapshotStore

DELAY = 0.5
SETTINGS = ProjectionSettings(poll_interval=0.1, commit_every=100, commit_interval=0.5)


class _Noop(ProjectionHandler):
    def handle(self, envelope) -> None:
        return None


@dataclass(frozen=True)
class _NoopFactory:
    def __call__(self, session, config) -> ProjectionHandler:
        return _Noop()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def drive(journal, shows: list[str], seconds: float, per_writer_rate: float,
                ) -> dict[tuple[str, int], float]:
    """Reserve seats on every show, paced; return (pid, seq) -> ack time (epoch s)."""
    acks: dict[tuple[str, int], float] = {}
    stop = time.monotonic() + seconds

    async def writer(show: str) -> None:
        kit = AggregateTestKit(SHOW, entity_id=show, journal=journal,
                               snapshot_store=InMemorySnapshotStore(), roundtrip=False)
        rng = random.Random(show)
        i = 0
        while time.monotonic() < stop and i < 100:
            seat = seat_label(i)
            r = await kit.arun(ReserveSeat(seat, f"c{rng.randint(0, 49)}"))
            assert r.ok, r.error
            acks[(SHOW.persistence_id(show), i + 1)] = time.time()
            i += 1
            await asyncio.sleep(rng.expovariate(per_writer_rate))
        await kit.aclose()

    await asyncio.gather(*(writer(s) for s in shows))
    return acks


async def wait_caught_up(control: Projections, name: str, handled_at_least: int,
                         timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        (st,) = await control.status(name)
        if st["handled"] >= handled_at_least and st["lag_events"] == 0:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"projection {name} did not catch up: {st}")
        await asyncio.sleep(0.05)


async def timed_replay(control: Projections, spec: ProjectionSpec, n: int) -> float:
    (before,) = await control.status(spec.name)
    t0 = time.perf_counter()
    await control.reset(spec, None)
    await wait_caught_up(control, spec.name, before["handled"] + n)
    return n / (time.perf_counter() - t0)


async def main_async(args: argparse.Namespace) -> dict:
    ks = f"bench_proj_{uuid.uuid4().hex[:6]}"
    config = CassandraConfig.from_contact(args.contact, keyspace=ks,
                                          eventual_consistency_delay=DELAY)
    journal = await CassandraJournal.connect(config, create_schema=True)
    control = Projections(config)
    view = reservations_projection("bench-view", settings=SETTINGS, audit=True)
    noop = ProjectionSpec("bench-noop", "show", _NoopFactory(), (SHOW,), 1, SETTINGS)
    try:
        await control.start(view)
        shows = [f"b{i}" for i in range(args.writers)]
        t0 = time.perf_counter()
        acks = await drive(journal, shows, args.seconds, args.rate / args.writers)
        load_s = time.perf_counter() - t0
        n = len(acks)
        await wait_caught_up(control, view.name, n)

        async with CassandraSession(config) as session:
            rows = await session.select_all(
                f"SELECT persistence_id, sequence_nr, toUnixTimestamp(applied) "
                f"FROM {ks}.{VIEW_TABLE}_applied", profile=RAW_PROFILE)
        lags = [r[2] / 1e3 - acks[(r[0], r[1])] for r in rows if (r[0], r[1]) in acks]
        assert len(lags) == n, (len(lags), n)

        t = time.perf_counter()
        raw = [te async for te in journal.events_by_tag("show")]
        raw_rate = len(raw) / (time.perf_counter() - t)
        assert len(raw) == n
        view_rate = await timed_replay(control, view, n)
        await control.start(noop)
        await wait_caught_up(control, noop.name, n)
        noop_rate = await timed_replay(control, noop, n)
        return {
            "events": n, "writers": args.writers, "load_seconds": round(load_s, 2),
            "offered_events_per_s": round(n / load_s, 1),
            "eventual_consistency_delay_s": DELAY, "poll_interval_s": SETTINGS.poll_interval,
            "lag_p50_s": round(pct(lags, 50), 3), "lag_p99_s": round(pct(lags, 99), 3),
            "lag_max_s": round(max(lags), 3),
            "raw_events_by_tag_per_s": round(raw_rate), "projection_noop_per_s": round(noop_rate),
            "projection_view_per_s": round(view_rate),
        }
    finally:
        for name in (view.name, noop.name):
            if control.handles(name):
                await control.stop(name)
        async with CassandraSession(config) as s:
            await s.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=60.0)
        await journal.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--writers", type=int, default=40)
    ap.add_argument("--rate", type=float, default=150.0, help="offered events/s, all writers")
    ap.add_argument("--out", default="results/projection_bench.json")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        r = asyncio.run(main_async(args))
    finally:
        ray.shutdown()
    rows = [
        ("events (reservations, {} shows)".format(r["writers"]), f"{r['events']}"),
        ("offered load", f"{r['offered_events_per_s']} events/s for {r['load_seconds']} s"),
        ("tag visibility delay + poll", f"{DELAY} s + {SETTINGS.poll_interval} s"),
        ("lag ack -> view row p50", f"{r['lag_p50_s'] * 1000:.0f} ms"),
        ("lag ack -> view row p99", f"{r['lag_p99_s'] * 1000:.0f} ms"),
        ("lag max", f"{r['lag_max_s'] * 1000:.0f} ms"),
        ("raw events_by_tag (current query)", f"{r['raw_events_by_tag_per_s']} events/s"),
        ("projection, no-op handler", f"{r['projection_noop_per_s']} events/s "
         f"({r['projection_noop_per_s'] / r['raw_events_by_tag_per_s']:.2f} x raw)"),
        ("projection, effectively-once view", f"{r['projection_view_per_s']} events/s "
         f"({r['projection_view_per_s'] / r['raw_events_by_tag_per_s']:.2f} x raw)"),
    ]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    r["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
