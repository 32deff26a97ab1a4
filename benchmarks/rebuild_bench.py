"""Rebuild benchmark (issue 29): bulk backfill of a projection version with Ray Data beside
today's one-worker projection replay, on the same events, in one run.

One Cassandra node, one local Ray (``--cpus``, default 2), one keyspace:

1. ``--events`` reservations appended straight to the journal (``--per-show`` per show
   aggregate, one group per show), tagged ``show`` as the seat aggregate tags them;
2. **replay**: the reservations-by-customer view (batched ``EffectivelyOnceView``, no audit)
   rebuilt the way ``projection reset`` does it today: one projection worker (a Ray actor)
   through the whole tag from the start, until its offset is the tag's last;
3. **backfill, 1 and 2 Ray Data workers**: a fresh version of the same view each
   (``raysource.data.backfill.backfill``: the cut read once by ``read_events`` and split in
   ``--tasks`` slices, each task reading its aggregates' logs, written by ``write_view``, at
   most 1 / 2 tasks at once), up to the same cut, after an untimed warm-up backfill of a few
   events (Ray Data's worker processes started, pyarrow imported).

Each row is events/s over its wall time (start of the catch-up to the last event applied);
every rebuild's view is checked complete (its watermarks sum to the events). The ratios are
the figures: backfill vs replay and 2 workers vs 1. On a 2-core machine that also runs
Cassandra, the workers share cores with Cassandra and the driver, which bounds the scaling.

Usage: python -m benchmarks.rebuild_bench [--contact host:port] [--events 100000]
(a smoke run: ``--events 2000 --per-show 50``; ``make bench BENCH_ARGS="--only rebuild"``)
Prints a table and writes results/rebuild_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import time
import uuid
from pathlib import Path

import ray

from benchmarks import ray_start
from benchmarks.projection_bench import REPLAY, bulk_load, timed_replay
from raysource.data.backfill import backfill
from raysource.data.source import stable_cut
from raysource.examples.reservations_view import reservations_projection
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionSpec, offset_to_str

DELAY = 1.0  # the journal's tag visibility delay in this run (the cut is 1 s behind now)


async def marks_total(spec: ProjectionSpec, config: CassandraConfig) -> int:
    """Sum of the view's watermarks (= events applied, each once, to a complete view)."""
    async with CassandraSession(config) as session:
        handler = spec.handler_factory(session, config)
        return sum((await handler.applied_marks() or {}).values())


async def main_async(args: argparse.Namespace) -> dict:
    ks = f"bench_rebuild_{uuid.uuid4().hex[:6]}"
    config = CassandraConfig.from_contact(
        args.contact, keyspace=ks, eventual_consistency_delay=DELAY
    )
    journal = await CassandraJournal.connect(config, create_schema=True)
    control = Projections(config)
    try:
        per_show = min(args.per_show, args.events)
        n = await bulk_load(journal, args.events // per_show, per_show)
        await asyncio.sleep(DELAY * 2)
        t = time.perf_counter()
        last = None
        async with contextlib.aclosing(journal.events_by_tag("show")) as rows:
            async for te in rows:
                last = te.offset
        raw_per_s = n / (time.perf_counter() - t)
        assert last is not None
        r: dict = {
            "events": n,
            "cpus": args.cpus,
            "host_cpus": os.cpu_count(),
            "tasks": args.tasks,
            "raw_events_by_tag_per_s": round(raw_per_s),
        }
        replay = reservations_projection("bench-rebuild", settings=REPLAY)
        r["replay_per_s"] = round((await timed_replay(control, replay, n, offset_to_str(last)))[0])
        assert await marks_total(replay, config) == n
        cut = stable_cut(config)
        # warm-up, untimed: Ray Data's first tasks start worker processes and import pyarrow
        # and the driver (tens of seconds on a busy box), which would land on the first row
        first = None
        async with contextlib.aclosing(journal.events_by_tag("show", limit=1)) as rows:
            async for te in rows:
                first = te.offset
        assert first is not None
        warm = reservations_projection("bench-rebuild", settings=REPLAY, version=9)
        async with CassandraSession(config) as session:
            await warm.handler_factory(session, config).global_prepare()
        await backfill(warm, config, workers=2, tasks=args.tasks, cut=first)
        for workers, version in ((1, 2), (2, 3)):
            spec = reservations_projection("bench-rebuild", settings=REPLAY, version=version)
            async with CassandraSession(config) as session:
                await spec.handler_factory(session, config).global_prepare()
            done = await backfill(spec, config, workers=workers, tasks=args.tasks, cut=cut)
            assert done.events == n and await marks_total(spec, config) == n, done
            r[f"backfill_{workers}_per_s"] = round(done.events / done.seconds)
            r[f"backfill_{workers}_s"] = round(done.seconds, 2)
        # each backfill first reads the cut once in the driver (a serial tag read, at about
        # the raw rate): the part of its time 2 workers cannot share
        r["cut_read_s_est"] = round(n / raw_per_s, 2)
        r["backfill_1_vs_replay"] = round(r["backfill_1_per_s"] / r["replay_per_s"], 2)
        r["backfill_2_vs_replay"] = round(r["backfill_2_per_s"] / r["replay_per_s"], 2)
        r["scaling_2_vs_1"] = round(r["backfill_2_per_s"] / r["backfill_1_per_s"], 2)
        return r
    finally:
        async with CassandraSession(config) as s:
            await s.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=120.0)
        await journal.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--per-show", type=int, default=100, help="events per show aggregate")
    ap.add_argument("--tasks", type=int, default=4, help="read/write tasks of a backfill")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--out", default="results/rebuild_bench.json")
    args = ap.parse_args()
    ray_start.init(
        f"benchrebuild-{uuid.uuid4().hex[:6]}",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        r = asyncio.run(main_async(args))
    finally:
        ray.shutdown()
    r["host"] = platform.node()
    print(
        f"\nrebuild of the reservations view, one run ({r['events']:,} events, "
        f"{r['tasks']} backfill tasks, Ray with {r['cpus']} CPUs on a {r['host_cpus']}-core host)"
    )
    print(f"  {'raw events_by_tag':<40} {r['raw_events_by_tag_per_s']:>10,} ev/s")
    print(f"  {'replay: one projection worker (today)':<40} {r['replay_per_s']:>10,} ev/s")
    for w in (1, 2):
        print(
            f"  {f'backfill: {w} Ray Data worker(s)':<40} {r[f'backfill_{w}_per_s']:>10,} ev/s"
            f"  x{r[f'backfill_{w}_vs_replay']:.2f} of replay"
        )
    print(f"  scaling 2 workers vs 1: x{r['scaling_2_vs_1']:.2f}")
    print(
        f"  of each backfill, the cut read in the driver (serial): ~{r['cut_read_s_est']} s "
        f"(events / raw events_by_tag); 1 worker {r['backfill_1_s']} s, 2 workers "
        f"{r['backfill_2_s']} s"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
