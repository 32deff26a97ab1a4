"""The consistency check after a load run, for a sample of entities.

For each sampled entity (the hottest few plus a random few of those that got commands):

1. **journal replay == live state**: the events read back from Cassandra
   (``CassandraJournal.replay`` + ``Serialization.decode``), folded with the type's event
   handler from its initial state, must equal the state the live aggregate replies
   (``GetShow()``; for the ledger, the balance of ``GetBalance()``).
2. **no double booking** (seats): while folding, no ``SeatReserved`` may name a seat that is
   already reserved — checked on the journal itself, since the state's seat->customer map
   could not show a second holder.
3. **counts**: reserved seats in the live state == accepted reserves - accepted cancels
   summed over all clients (ledger: balance == accepted appends). An entity that saw a command
   with an unknown outcome (an error) cannot be counted exactly; it is listed as skipped for
   this check, not silently passed.

Run it after every client finished (nothing in flight), before the system shuts down.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from raysource.examples.seats import SeatReserved
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.serialization import Serialization
from raysource.loadtest.workloads import Workload, live_query
from raysource.sharding.system import System

__all__ = ["ConsistencyReport", "check", "pick_sample"]


@dataclass
class ConsistencyReport:
    """``ok`` is true when every sampled entity passed every check that applied to it."""

    sampled: list[str] = field(default_factory=list)
    replay_equal: int = 0
    counts_equal: int = 0
    double_bookings: int = 0
    events_replayed: int = 0
    skipped_counts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    count_rule: str = "reserved seats == accepted reserves - accepted cancels"

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.sampled)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        n = len(self.sampled)
        verdict = "PASSED" if self.ok else "FAILED"
        out = [
            f"consistency check {verdict} on {n} sampled entities "
            f"({self.events_replayed:,} journal events replayed):",
            f"  journal replay == live state  {self.replay_equal}/{n}",
            f"  {self.count_rule}  "
            f"{self.counts_equal}/{n - len(self.skipped_counts)}"
            + (
                f"  ({len(self.skipped_counts)} skipped: unknown outcomes)"
                if self.skipped_counts
                else ""
            ),
        ]
        if self.count_rule.startswith("reserved"):
            out.append(f"  double bookings in the journal  {self.double_bookings}")
        out += [f"  problem: {p}" for p in self.problems[:10]]
        return out


def pick_sample(
    workload: Workload, tallies: dict[str, dict[str, int]], size: int, seed: int = 0
) -> list[str]:
    """The hottest ``size // 2`` entities plus random others that received commands."""
    touched = [eid for eid in workload.entity_ids() if eid in tallies]
    hot = touched[: max(1, size // 2)]
    rest = [eid for eid in touched if eid not in hot]
    rng = random.Random(seed)
    return hot + rng.sample(rest, min(len(rest), size - len(hot)))


def _expected_count(workload: Workload, tally: dict[str, int]) -> int:
    if workload.name == "seats":
        return tally.get("reserve", 0) - tally.get("cancel", 0)
    return tally.get("append", 0)


def _live_count(workload: Workload, live: Any) -> int:
    return len(live.reservations) if workload.name == "seats" else int(live)


def _same(workload: Workload, replayed: Any, live: Any) -> bool:
    return replayed == live if workload.name == "seats" else replayed.balance == live


async def _replay(
    config: CassandraConfig, workload: Workload, ids: list[str]
) -> dict[str, tuple[Any, int, int]]:
    """entity id -> (folded state, events, double bookings seen while folding)."""
    agg = workload.aggregate_type
    ser = Serialization()
    agg.register_types(ser)
    journal = await CassandraJournal.connect(config)
    out: dict[str, tuple[Any, int, int]] = {}
    try:
        for eid in ids:
            pid = agg.persistence_id(eid)
            state, n, doubles = agg.initial_state, 0, 0
            async for stored in journal.replay(pid):
                event = ser.decode(
                    stored.serializer_id,
                    stored.manifest,
                    stored.payload,
                    persistence_id=pid,
                    sequence_nr=stored.sequence_nr,
                )
                if isinstance(event, SeatReserved) and event.seat in state.reservations:
                    doubles += 1
                state = agg.apply(state, [event])
                n += 1
            out[eid] = (state, n, doubles)
    finally:
        await journal.close()
    return out


def check(
    system: System,
    config: CassandraConfig,
    workload: Workload,
    tallies: dict[str, dict[str, int]],
    sample: list[str],
) -> ConsistencyReport:
    """Run the checks of the module docstring on ``sample`` (``tallies``: merged accepted
    counts per entity and kind, ``"error"`` for unknown outcomes)."""
    report = ConsistencyReport(sampled=list(sample))
    if workload.name != "seats":
        report.count_rule = "balance == accepted appends"
    agg = workload.aggregate_type
    live = {eid: system.entity(agg, eid).ask(live_query(workload), timeout=30.0) for eid in sample}
    replayed = asyncio.run(_replay(config, workload, sample))
    for eid in sample:
        state, n, doubles = replayed[eid]
        report.events_replayed += n
        report.double_bookings += doubles
        if doubles:
            report.problems.append(f"{eid}: {doubles} seat(s) reserved twice in the journal")
        if _same(workload, state, live[eid]):
            report.replay_equal += 1
        else:
            report.problems.append(f"{eid}: journal replay {state!r} != live {live[eid]!r}")
        tally = tallies.get(eid, {})
        if tally.get("error"):
            report.skipped_counts.append(eid)
            continue
        expected, got = _expected_count(workload, tally), _live_count(workload, live[eid])
        if expected == got:
            report.counts_equal += 1
        else:
            report.problems.append(f"{eid}: live count {got} != accepted-based {expected}")
    return report
