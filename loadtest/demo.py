"""``raysource demo`` / ``make demo``: the main job.

Seat reservations under contention on local Ray with a real Cassandra: 200 shows hosted in 8
shard actors, 2 load clients (Ray actors) pipelining 8 commands each, Zipf-popular shows and
seats (popular shows sell out, so later reservations are rejected), some cancellations and
``GetShow`` queries. Prints where Cassandra comes from, progress, the summary (commands/s,
p50/p95/p99, accepted vs rejected), the consistency check and where the JSON + PNG report is;
stops everything it started (Ray, the system's actors, a Cassandra node it started unless
``keep``).

The read side runs alongside: the example projection *reservations by customer*
(:func:`~raysource.examples.reservations_view.reservations_projection`) is started before the
load; after it the demo waits (bounded) until the projection's lag is 0 with every event of
the run visible, then checks for a sample of customers that the view equals what the live state
of every show the run touched says they hold (:class:`ReadSideCheck`), and stops the projection.

Durable timers run alongside too: seat holds that expire unless confirmed
(:class:`~raysource.loadtest.demo_holds.HoldCheck`).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.loadtest.demo_holds import HoldCheck
from raysource.loadtest.driver import LoadExtension, LoadTestParams, Say
from raysource.loadtest.standalone import run_standalone
from raysource.sharding.system import System

__all__ = ["DEMO_PARAMS", "DemoResult", "ReadSideCheck", "run_demo"]

# 8 shards, not the type's 32: a hosted shard is one Ray actor process (~0.5 s, ~40 MB to
# start), and the demo targets a 2-core laptop finishing in about a minute. A 1 s tag
# visibility delay (5 s by default) lets the view catch up right after the load.
DEMO_PARAMS = LoadTestParams(
    workload="seats",
    entities=200,
    clients=2,
    duration_s=20.0,
    placement="hosted",
    shards=8,
    window=8,
    eventual_consistency_delay=1.0,
)


@dataclass
class ReadSideCheck:
    """The demo's read side (a :class:`~raysource.loadtest.driver.LoadExtension`); see the module
    docstring. ``ok`` once the projection caught up and every sampled customer matched."""

    customers: int = 20
    catch_up_timeout_s: float = 20.0
    seed: int = 0
    ok: bool = False
    projection: str = ""
    caught_up: bool = False
    catch_up_s: float | None = None
    final_lag: int | None = None
    shows: int = 0
    reservations: int = 0
    sampled: list[str] = field(default_factory=list)
    matched: int = 0
    problems: list[str] = field(default_factory=list)
    _control: Any = None

    def before_load(self, system: System, config: CassandraConfig, workload: Any, say: Say) -> None:
        """Start the projection on the demo's keyspace (it follows the tag from its stored
        offset)."""
        from raysource.examples.reservations_view import reservations_projection
        from raysource.readside.projection_actor import Projections

        spec = reservations_projection()
        self.projection = spec.name
        t0 = time.perf_counter()
        self._control = Projections(config)
        asyncio.run(self._control.start(spec))
        say(
            f"read side: projection {spec.name} started in {time.perf_counter() - t0:.1f} s "
            f"(tag {spec.tag!r}, visibility delay {config.eventual_consistency_delay:g} s)"
        )

    def after_load(
        self,
        system: System,
        config: CassandraConfig,
        workload: Any,
        tallies: dict[str, dict[str, int]],
        say: Say,
    ) -> None:
        """Wait for lag 0, then compare the view with the live state (see the class)."""
        if self._control is None:
            return
        loaded_at = time.time()
        t0 = time.perf_counter()
        # every event of the run has a tag row stamped before loaded_at; once the lag query's
        # cutoff (now - delay) has passed it, lag 0 means the view holds all of them
        visible_at = loaded_at + config.eventual_consistency_delay + 0.2
        last_line = 0.0
        while True:
            lag = self._lag()
            waited = time.perf_counter() - t0
            if lag == 0 and time.time() >= visible_at:
                self.caught_up, self.catch_up_s = True, waited
                break
            if waited >= self.catch_up_timeout_s:
                break
            if waited - last_line >= 2.0:
                last_line = waited
                say(
                    f"  [{waited:4.1f} s] read side: projection lag "
                    f"{'?' if lag is None else f'{lag:,}'} events"
                )
            time.sleep(0.25)
        self.final_lag = self._lag()
        agg = workload.aggregate_type
        shows = [eid for eid in workload.entity_ids() if eid in tallies]
        with ThreadPoolExecutor(16) as pool:
            states = list(pool.map(lambda eid: system.entity(agg, eid).state(timeout=30.0), shows))
        expected: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for show, state in zip(shows, states):
            for seat, customer in state.reservations.items():
                expected[customer].append((show, seat))
        self.shows = len(shows)
        self.reservations = sum(len(v) for v in expected.values())
        holders = sorted(expected, key=lambda c: (-len(expected[c]), c))
        hot = holders[: self.customers // 2]
        rest = [c for c in holders if c not in hot]
        rng = random.Random(self.seed)
        self.sampled = hot + rng.sample(rest, min(len(rest), self.customers - len(hot)))
        views = asyncio.run(_view_rows(config, self.sampled))
        run_shows = set(workload.entity_ids())
        for customer in self.sampled:
            got = [(show, seat) for show, seat in views[customer] if show in run_shows]
            want = sorted(expected[customer])
            if got == want:
                self.matched += 1
            else:
                self.problems.append(f"{customer}: view {got} != live state {want}")
        self.ok = (
            self.caught_up and not self.problems and bool(self.sampled) and self.final_lag == 0
        )

    def close(self, say: Say) -> None:
        """Stop the projection (its offset stays stored)."""
        if self._control is None:
            return
        control, self._control = self._control, None
        try:
            asyncio.run(control.stop(self.projection))
        except Exception as exc:  # noqa: BLE001 - Ray shutdown ends the workers anyway
            say(f"read side: stopping projection {self.projection} failed: {exc!r}")

    def _lag(self) -> int | None:
        try:
            statuses = asyncio.run(self._control.status(self.projection))
        except Exception:  # noqa: BLE001 - shown as an unknown lag; the wait is bounded
            return None
        lags = [st.get("lag_events") for st in statuses]
        if not lags or any(lag is None for lag in lags):
            return None
        return sum(lags)

    def lines(self) -> list[str]:
        """The read-side lines of the summary."""
        if not self.projection:
            return ["read-side check not run"]
        lag = "?" if self.final_lag is None else f"{self.final_lag:,}"
        caught = (
            f"caught up {self.catch_up_s:.1f} s after the load"
            if self.caught_up
            else f"NOT caught up within {self.catch_up_timeout_s:g} s"
        )
        out = [
            f"read side: projection {self.projection} {caught}, final lag {lag} events",
            f"read-side check {'PASSED' if self.ok else 'FAILED'} on {len(self.sampled)} sampled "
            f"customers: view == live state of {self.shows} shows "
            f"({self.reservations:,} reservations)  {self.matched}/{len(self.sampled)}",
        ]
        out += [f"  problem: {p}" for p in self.problems[:10]]
        return out


async def _view_rows(
    config: CassandraConfig, customers: list[str]
) -> dict[str, list[tuple[str, str]]]:
    from raysource.examples.reservations_view import reservations_of
    from raysource.journal.cassandra.session import CassandraSession

    async with CassandraSession(config) as session:
        return {c: await reservations_of(session, config.keyspace, c) for c in customers}


@dataclass
class _Checks:
    """Several load extensions as one (each in turn; ``ok`` when all are)."""

    parts: list[LoadExtension]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parts)

    def before_load(self, *args: Any) -> None:
        for p in self.parts:
            p.before_load(*args)

    def after_load(self, *args: Any) -> None:
        for p in self.parts:
            p.after_load(*args)

    def close(self, say: Say) -> None:
        for p in self.parts:
            p.close(say)

    def lines(self) -> list[str]:
        return [line for p in self.parts for line in p.lines()]


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did: ``exit_code`` (0: the consistency, read-side and
    durable-timer checks passed and nothing it started is left running) and the read side's
    and the holds' outcomes."""

    exit_code: int
    read_side: ReadSideCheck
    holds: HoldCheck | None = None

    @property
    def read_side_ok(self) -> bool:
        return self.read_side.ok


def run_demo(
    seconds: float = 20.0,
    contact: str | None = None,
    keep: bool = False,
    *,
    keyspace: str | None = None,
    results_dir: str | None = None,
    say: Say = print,
) -> DemoResult:
    """Run the demo for ``seconds`` of load (``keyspace``/``results_dir`` override the
    defaults, e.g. in tests)."""
    params = replace(
        DEMO_PARAMS,
        duration_s=seconds,
        keyspace=keyspace or DEMO_PARAMS.keyspace,
        results_dir=results_dir or DEMO_PARAMS.results_dir,
    )
    say(
        f"raysource demo: seat reservations, {params.entities} shows, "
        f"{params.clients} clients, {seconds:g} s of load, read side: reservations by customer"
    )
    read_side, holds = ReadSideCheck(), HoldCheck()
    code = run_standalone(
        params, contact=contact, keep=keep, say=say, extension=_Checks([read_side, holds])
    )
    sys.stdout.flush()
    return DemoResult(code, read_side, holds)
