"""Read-side benchmark: the goal rows of issue 13 beside their limits, before and after.

Everything runs in one process on one Cassandra node, in one run (2 cores: compare ratios):

* lag ack -> view row, **default settings** (the journal's 5 s visibility delay, the default
  projection settings), under W2-style load: callers on many show aggregates (a raysource
  ``System`` on Ray, hosted placement, Cassandra store) reserve seats, paced, while the
  reservations-by-customer projection runs as a Ray actor. Lag of an event = (its view batch's
  server-side ``now()`` in the audit table) - (when the caller got the acknowledgement), same
  host clock. "before": the durable tag query only (``live=False``, what the read side was);
  "after": with the live path. Completeness of each run from the audit table: every event of
  the run applied exactly once.
* ``EffectivelyOnceView`` while catching up (after a reset), "before" = one logged batch per
  event (``batch_size=1``, what the writer did) vs "after" = batched, each as a ratio to the
  no-op projection's rate; the no-op projection vs a raw ``events_by_tag`` current query.
* n slices: how many times the tag store is read for one pass of n slice workers (counted).

Usage: python -m benchmarks.projection_bench [--contact host:port] [--seconds 12]
Prints a table and writes results/projection_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ray

from raysource.examples.reservations_view import VIEW_TABLE, reservations_projection
from raysource.examples.seats import SHOW, GetShow, ReserveSeat, seat_label
from raysource.journal.errors import JournalUnavailableError
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.memory import InMemoryJournal
from raysource.readside.offsets import InMemoryOffsetStore
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionHandler, ProjectionSettings, ProjectionSpec
from raysource.readside.worker import ProjectionWorker
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

DEFAULTS = ProjectionSettings()  # the lag rows use production defaults
REPLAY = ProjectionSettings(poll_interval=0.1, commit_every=500)


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


async def drive(system: System, shows: list[str], seconds: float, per_writer_rate: float,
                ) -> dict[tuple[str, int], float]:
    """Reserve seats on every show, paced; (pid, seq) -> ack time (epoch s)."""
    acks: dict[tuple[str, int], float] = {}
    for attempt in range(10):  # activate the hosts first (their Cassandra sessions)
        try:
            await asyncio.gather(*(system.entity(SHOW, s).ask_async(GetShow()) for s in shows))
            break
        except JournalUnavailableError:
            await asyncio.sleep(2.0)
    stop = time.monotonic() + seconds

    async def writer(show: str) -> None:
        ref = system.entity(SHOW, show)
        rng = random.Random(show)
        i = 0
        while time.monotonic() < stop and i < 100:
            await ref.ask_async(ReserveSeat(seat_label(i), f"c{rng.randint(0, 49)}"))
            acks[(SHOW.persistence_id(show), i + 1)] = time.time()
            i += 1
            await asyncio.sleep(rng.expovariate(per_writer_rate))

    await asyncio.gather(*(writer(s) for s in shows))
    return acks


async def status_of(control: Projections, name: str) -> dict:
    (st,) = await control.status(name)
    return st


async def wait_caught_up(control: Projections, name: str, handled_at_least: int,
                         timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await status_of(control, name)
        if st["handled"] >= handled_at_least and st["lag_events"] == 0:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"projection {name} did not catch up: {st}")
        await asyncio.sleep(0.05)


async def applied(config: CassandraConfig) -> list[tuple[str, int, float]]:
    async with CassandraSession(config) as session:
        rows = await session.select_all(
            f"SELECT persistence_id, sequence_nr, toUnixTimestamp(applied) "
            f"FROM {config.keyspace}.{VIEW_TABLE}_applied", profile=RAW_PROFILE)
    return [(r[0], r[1], r[2] / 1e3) for r in rows]


async def lag_run(system: System, control: Projections, config: CassandraConfig, *, live: bool,
                  args: argparse.Namespace) -> dict:
    spec = reservations_projection(f"bench-lag-{'live' if live else 'durable'}", audit=True,
                                   settings=dataclasses.replace(DEFAULTS, live=live))
    await control.start(spec)
    await asyncio.sleep(1.5)  # host actors list the new worker within ~1 s of their next write
    shows = [f"{'l' if live else 'd'}{i}-{uuid.uuid4().hex[:4]}" for i in range(args.writers)]
    t0 = time.perf_counter()
    acks = await drive(system, shows, args.seconds, args.rate / args.writers)
    load_s = time.perf_counter() - t0
    await wait_caught_up(control, spec.name, 0)
    deadline = time.monotonic() + 30
    while True:
        rows = [r for r in await applied(config) if (r[0], r[1]) in acks]
        if {(p, s) for p, s, _ in rows} >= set(acks) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    st = await status_of(control, spec.name)
    await control.stop(spec.name)
    counts = Counter((p, s) for p, s, _ in rows)
    lags = [t - acks[(p, s)] for p, s, t in rows]
    return {"events": len(acks), "load_s": round(load_s, 2),
            "offered_per_s": round(len(acks) / load_s, 1),
            "missed": len(set(acks) - set(counts)),
            "doubled": sum(1 for c in counts.values() if c > 1),
            "lag_p50_ms": round(pct(lags, 50) * 1e3, 1), "lag_p99_ms": round(pct(lags, 99) * 1e3, 1),
            "lag_max_ms": round(max(lags) * 1e3, 1), "live": st.get("live")}


async def timed_replay(control: Projections, spec: ProjectionSpec, n: int) -> float:
    await control.start(spec)
    await wait_caught_up(control, spec.name, n)
    before = (await status_of(control, spec.name))["handled"]
    t0 = time.perf_counter()
    await control.reset(spec, None)
    await wait_caught_up(control, spec.name, before + n)
    rate = n / (time.perf_counter() - t0)
    await control.stop(spec.name)
    return rate


class _CountingJournal(InMemoryJournal):
    def __init__(self) -> None:
        super().__init__()
        self.tag_rows_read = 0

    async def events_by_tag(self, tag, after=None, *, limit=None):
        async for te in super().events_by_tag(tag, after, limit=limit):
            self.tag_rows_read += 1
            yield te


async def slice_reads(n_slices: int, events: int = 2000) -> float:
    """Tag rows read by one catch-up pass of ``n_slices`` workers / the rows in the tag."""
    from raysource.journal.api import StoredEvent
    from datetime import datetime, timezone

    journal = _CountingJournal()
    for i in range(events):
        pid = f"show|s{i % 50}"
        await journal.append([StoredEvent(pid, i // 50 + 1, b"{}", "x", 1,
                                          datetime.now(timezone.utc), tags=frozenset({"t"}))])
    spec = ProjectionSpec("slices", "t", _NoopFactory(), (), n_slices,
                          dataclasses.replace(REPLAY, live=False))
    store = InMemoryOffsetStore()
    workers = [ProjectionWorker(spec, i, None, None, journal, offsets=store, handler=_Noop())
               for i in range(n_slices)]
    for w in workers:
        w.serialization = _RawSerialization()
        await w._pass()
    return journal.tag_rows_read / events


class _RawSerialization:
    def decode(self, *a, **k):
        return None


async def main_async(args: argparse.Namespace) -> dict:
    ks = f"bench_proj_{uuid.uuid4().hex[:6]}"
    config = CassandraConfig.from_contact(args.contact, keyspace=ks)  # default 5 s delay
    journal = await CassandraJournal.connect(config, create_schema=True)
    system = System.start("benchproj", store=StoreSpec.for_cassandra(config),
                          types=[SHOW], placement={SHOW.name: "hosted"})
    control = Projections(config)
    try:
        r: dict = {"eventual_consistency_delay_s": config.eventual_consistency_delay,
                   "poll_interval_s": DEFAULTS.poll_interval}
        r["lag_before"] = await lag_run(system, control, config, live=False, args=args)
        r["lag_after"] = await lag_run(system, control, config, live=True, args=args)
        n = r["lag_before"]["events"] + r["lag_after"]["events"]
        # throughput: every event again, after a reset
        await asyncio.sleep(config.eventual_consistency_delay)
        t = time.perf_counter()
        raw = [te async for te in journal.events_by_tag("show")]
        r["raw_per_s"] = round(len(raw) / (time.perf_counter() - t))
        assert len(raw) == n, (len(raw), n)
        noop = ProjectionSpec("bench-noop", "show", _NoopFactory(), (SHOW,), 1, REPLAY)
        r["noop_per_s"] = round(await timed_replay(control, noop, n))
        one = reservations_projection("bench-view-1", audit=True,
                                      settings=dataclasses.replace(REPLAY, batch_size=1))
        r["view_before_per_s"] = round(await timed_replay(control, one, n))
        batched = reservations_projection("bench-view-b", audit=True, settings=REPLAY)
        r["view_after_per_s"] = round(await timed_replay(control, batched, n))
        r["events"] = n
        r["slice_reads"] = {k: await slice_reads(k) for k in (1, 2, 4)}
        return r
    finally:
        system.shutdown()
        async with CassandraSession(config) as s:
            await s.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=60.0)
        await journal.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--writers", type=int, default=40)
    ap.add_argument("--rate", type=float, default=150.0, help="offered events/s, all writers")
    ap.add_argument("--out", default="results/projection_bench.json")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace=f"benchproj-{uuid.uuid4().hex[:6]}")
    try:
        r = asyncio.run(main_async(args))
    finally:
        ray.shutdown()
    b, a = r["lag_before"], r["lag_after"]
    noop = r["noop_per_s"]
    print(f"\nread side, one run ({r['events']} events; tag visibility delay "
          f"{r['eventual_consistency_delay_s']} s, poll {r['poll_interval_s']} s: defaults)")
    print(f"{'goal row':44} {'before':>16} {'after':>16}   limit")
    rows = [
        ("lag ack -> view row p50 (W2-style load)", f"{b['lag_p50_ms']:.0f} ms",
         f"{a['lag_p50_ms']:.0f} ms", ""),
        ("lag ack -> view row p99", f"{b['lag_p99_ms']:.0f} ms", f"{a['lag_p99_ms']:.0f} ms",
         f"<= 100 ms  (after/limit x{a['lag_p99_ms'] / 100:.2f})"),
        ("lag max", f"{b['lag_max_ms']:.0f} ms", f"{a['lag_max_ms']:.0f} ms", ""),
        ("completeness: missed / applied twice", f"{b['missed']} / {b['doubled']}",
         f"{a['missed']} / {a['doubled']}", "0 / 0"),
        ("EffectivelyOnceView, catching up", f"{r['view_before_per_s']} ev/s",
         f"{r['view_after_per_s']} ev/s", f"no-op {noop} ev/s"),
        ("  as x no-op", f"x{r['view_before_per_s'] / noop:.2f}",
         f"x{r['view_after_per_s'] / noop:.2f}", ">= x0.50"),
        ("no-op projection as x raw events_by_tag", "", f"x{noop / r['raw_per_s']:.2f}",
         f">= x0.70 (raw {r['raw_per_s']} ev/s)"),
        ("tag rows read per event, 1/2/4 slices", "",
         " / ".join(f"{r['slice_reads'][k]:.1f}" for k in (1, 2, 4)), "about 1"),
    ]
    for label, before, after, limit in rows:
        print(f"{label:44} {before:>16} {after:>16}   {limit}")
    print(f"offered load: {a['offered_per_s']} events/s over {args.writers} shows; "
          f"live path counters: {a['live']}")
    r["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
