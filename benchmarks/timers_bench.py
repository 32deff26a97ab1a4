"""Durable timers benchmark (issue 17): how fast the timer services deliver a crowd of timers
due at the same instant, beside the limit measured in the same run.

On local Ray with Cassandra, ``--aggregates`` hosted aggregates each schedule ``--timers``
timers due at one instant (a few seconds after the last schedule), twice: with the default
pacing (``TimerSettings.max_fires_per_s`` = 1,000 per node: a backlog is delivered at that
steady rate on purpose) and with pacing lifted (100,000/s: what the delivery path can do).
Measured:

* **fires/s**: timers delivered (their command applied and answered) per second, from the
  due instant to the last answer, and the **lateness** (answer time minus due time: p50, p99,
  max) as the timer services report it (``System.timer_info()``);
* the **limit**: the same number of the same commands sent by the driver with ``ask_many``
  (one call per aggregate and 100 commands, 8 threads), commands/s — the best the reference
  path does for this shape of work.

    python -m benchmarks.timers_bench --contact 127.0.0.1:9042 [--aggregates 100 --timers 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ray

from benchmarks import ray_start
from raysource.devnode.select import select_cassandra
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.aggregate import AggregateType, persist, reply, schedule
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System
from raysource.sharding.timer_pump import TimerSettings

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class Arm:
    count: int
    at: datetime


@dataclass(frozen=True)
class Ring:
    i: int


@dataclass(frozen=True)
class Count:
    pass


@dataclass(frozen=True)
class Armed:
    count: int


@dataclass(frozen=True)
class Rang:
    i: int


def _handle(state: int, cmd: object):
    match cmd:
        case Arm(count=n, at=at):
            return persist(Armed(n), schedule=[schedule(f"t{i}", Ring(i), at=at) for i in range(n)])
        case Ring(i=i):
            return persist(Rang(i), reply=i)
        case Count():
            return reply(state)


def _apply(state: int, event: object) -> int:
    return state + 1 if isinstance(event, Rang) else state


BELL = AggregateType(
    "bell",
    0,
    _handle,
    _apply,
    events=(Armed, Rang),
    commands=(Arm, Ring, Count),
    placement="hosted",
    number_of_shards=8,
)


def _fired(system: System) -> int:
    return sum(i.get("fired", 0) for i in system.timer_info())


def run(
    config: CassandraConfig, aggregates: int, timers: int, settings: TimerSettings, say=print
) -> dict:
    system = System.start(
        f"tb{uuid.uuid4().hex[:6]}",
        types=[BELL],
        store=StoreSpec.for_cassandra(config, create_schema=True),
        timers=settings,
    )
    try:
        ids = [f"bell-{uuid.uuid4().hex[:6]}-{i}" for i in range(aggregates)]
        with ThreadPoolExecutor(8) as pool:  # activate every aggregate first
            list(pool.map(lambda e: system.entity(BELL, e).ask(Count(), timeout=60), ids))
        # the limit: the same commands from the driver, one ask_many per aggregate
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda e: system.entity(BELL, e).ask_many(
                        [Ring(i) for i in range(timers)], timeout=120
                    ),
                    ids,
                )
            )
        ask_many_s = time.perf_counter() - started
        limit = aggregates * timers / ask_many_s
        say(
            f"limit: {aggregates * timers:,} commands by ask_many in {ask_many_s:.1f} s "
            f"= {limit:,.0f} cmd/s"
        )
        # the crowd: every timer due at one instant
        before = _fired(system)
        due = datetime.now(UTC) + timedelta(seconds=3 + aggregates * 0.05)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda e: system.entity(BELL, e).ask(Arm(timers, due), timeout=60), ids))
        if datetime.now(UTC) > due:
            say("warning: arming took longer than the lead time; lateness includes it")
        total = aggregates * timers
        deadline = time.monotonic() + 600
        last_say = 0.0
        while (done := _fired(system) - before) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {total} timers fired in 600 s")
            if time.monotonic() - last_say > 2:
                last_say = time.monotonic()
                say(f"  fired {done:,}/{total:,}")
            time.sleep(0.2)
        finished = datetime.now(UTC)
        info = system.timer_info()
        lat = {k: max((i["lateness_ms"][k] or 0) for i in info) for k in ("p50", "p99", "max")}
        span_s = max(1e-3, lat["max"] / 1000)  # due instant -> last answer
        out = {
            "max_fires_per_s": settings.max_fires_per_s,
            "aggregates": aggregates,
            "timers_per_aggregate": timers,
            "total": total,
            "fires_per_s": total / span_s,
            "lateness_ms": lat,
            "checked_at_s_after_due": (finished - due).total_seconds(),
            "limit_ask_many_cmd_per_s": limit,
            "ratio_to_limit": (total / span_s) / limit,
        }
        say(
            f"timers (pacing {settings.max_fires_per_s:,.0f}/s): {total:,} due at once -> "
            f"{out['fires_per_s']:,.0f} fires/s, lateness p50 "
            f"{lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; ask_many limit "
            f"{limit:,.0f} cmd/s (ratio {out['ratio_to_limit']:.2f})"
        )
        return out
    finally:
        system.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default=os.environ.get("RAYSOURCE_CASSANDRA"))
    ap.add_argument("--aggregates", type=int, default=100)
    ap.add_argument("--timers", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    source = select_cassandra(args.contact, say=print)
    try:
        host, port = source.contact_point.rsplit(":", 1)
        config = CassandraConfig(
            contact_points=(host,), port=int(port), keyspace=f"timers_bench_{uuid.uuid4().hex[:6]}"
        )
        ray_start.init(
            f"timers-bench-{uuid.uuid4().hex[:6]}",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
        )
        result = {
            "paced": run(config, args.aggregates, args.timers, TimerSettings()),
            "unpaced": run(
                config, args.aggregates, args.timers, TimerSettings(max_fires_per_s=100_000)
            ),
        }
        print(
            f"\n| durable timers, {args.aggregates * args.timers:,} due at once "
            "| fires/s | lateness p50 | p99 | max | "
            "ask_many limit (same run) | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, r in result.items():
            lat = r["lateness_ms"]
            print(
                f"| {name} (max {r['max_fires_per_s']:,.0f}/s) | {r['fires_per_s']:,.0f} | "
                f"{lat['p50']} ms | {lat['p99']} ms | {lat['max']} ms | "
                f"{r['limit_ask_many_cmd_per_s']:,.0f} cmd/s | {r['ratio_to_limit']:.2f} |"
            )
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        source.release()


if __name__ == "__main__":
    main()
