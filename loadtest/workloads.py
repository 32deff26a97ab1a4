"""Workloads of the load engine: which aggregate type, which entities, which next command.

A :class:`Workload` is a picklable value (it travels to every load client); each client calls
:meth:`Workload.generator` once to get its own stateful :class:`CommandSource` (own random
stream, own customers), so clients never share mutable state.

* ``seats``: many shows, many customers, Zipf-ish contention — a few shows and the front seats
  are popular, so popular shows sell out and later reservations for them are rejected. Mostly
  reservations, some cancellations (of the client's own accepted reservations), some
  ``GetShow`` queries.
* ``ledger``: ``Append`` with a unique op id per command (never rejected).

Every command carries a *kind* (``reserve``/``cancel``/``query``/``append``) that the engine
counts per entity on acceptance; :mod:`raysource.loadtest.consistency` turns those tallies into the
expected live state.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, replace
from typing import Any, Protocol

from raysource.examples.ledger import LEDGER, Append, GetBalance
from raysource.examples.seats import (
    DEFAULT_SEATS,
    SHOW,
    CancelReservation,
    GetShow,
    ReserveSeat,
    seat_label,
)
from raysource.journal.errors import ConfigError
from raysource.runtime.aggregate import NO_SNAPSHOTS, AggregateType, SnapshotPolicy

__all__ = ["WORKLOADS", "CommandSource", "Workload", "make_workload", "zipf_cum_weights"]

WORKLOADS = ("seats", "ledger")


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative weights of a Zipf(s) distribution over ranks ``0..n-1`` (rank 0 hottest)."""
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect.bisect_left(cum, rng.random() * cum[-1])


class CommandSource(Protocol):
    """One client's stream of commands."""

    def next(self) -> tuple[str, Any, str]:
        """``(entity_id, command, kind)`` of the next command to send."""
        ...

    def outcome(self, entity_id: str, command: Any, kind: str, accepted: bool) -> None:
        """Told the outcome of every command (errors count as not accepted)."""
        ...


@dataclass(frozen=True)
class Workload:
    """A workload: ``name`` in :data:`WORKLOADS`, the aggregate type it drives (already adapted
    to the run's shard count and snapshot policy) and its shape.

    ``entities``: number of shows / ledgers; ``zipf_s``: skew of entity and seat popularity
    (0 = uniform); ``mix``: (reserve, cancel, query) weights for ``seats``.
    """

    name: str
    aggregate_type: AggregateType
    run_id: str
    entities: int
    zipf_s: float = 1.0
    seat_zipf_s: float = 0.6
    customers_per_client: int = 500
    mix: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def entity_ids(self) -> list[str]:
        """Every entity id of the run, hottest first (ids embed the run id: fresh aggregates)."""
        noun = "show" if self.name == "seats" else "ledger"
        return [f"{self.run_id}-{noun}-{i:05d}" for i in range(self.entities)]

    def generator(self, client_index: int, seed: int) -> CommandSource:
        rng = random.Random(seed * 1_000_003 + client_index)
        if self.name == "seats":
            return _SeatsSource(self, client_index, rng)
        return _LedgerSource(self, client_index, rng)


def make_workload(
    name: str,
    *,
    run_id: str,
    entities: int,
    shards: int | None = None,
    snapshot_every: int | None = None,
    zipf_s: float = 1.0,
) -> Workload:
    """Build the ``name`` workload. ``shards`` overrides the type's number of shards (a hosted
    shard is one Ray actor, so few shards suit small machines); ``snapshot_every`` overrides
    its snapshot policy (0 = never snapshot)."""
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
    if entities < 1:
        raise ConfigError(f"--entities must be >= 1, got {entities}")
    agg: AggregateType = SHOW if name == "seats" else LEDGER
    changes: dict[str, Any] = {}
    if shards is not None:
        changes["number_of_shards"] = shards
    if snapshot_every is not None:
        changes["snapshot"] = (
            NO_SNAPSHOTS
            if snapshot_every == 0
            else SnapshotPolicy(every_n_events=snapshot_every, keep=2)
        )
    if changes:
        agg = replace(agg, **changes)
    return Workload(name, agg, run_id, entities, zipf_s=zipf_s)


class _SeatsSource:
    def __init__(self, w: Workload, client: int, rng: random.Random) -> None:
        self.rng = rng
        self.ids = w.entity_ids()
        self.show_cum = zipf_cum_weights(len(self.ids), w.zipf_s)
        self.seat_cum = zipf_cum_weights(DEFAULT_SEATS, w.seat_zipf_s)
        self.customers = [f"c{client}-{k}" for k in range(w.customers_per_client)]
        self.mix = list(itertools.accumulate(w.mix))
        # accepted, not yet cancelled reservations of this client's customers
        self.holdings: list[tuple[str, str, str]] = []

    def next(self) -> tuple[str, Any, str]:
        r = self.rng.random() * self.mix[-1]
        if r >= self.mix[1]:
            return self.ids[_pick(self.rng, self.show_cum)], GetShow(), "query"
        if r >= self.mix[0]:
            if self.holdings:
                i = self.rng.randrange(len(self.holdings))
                self.holdings[i], self.holdings[-1] = self.holdings[-1], self.holdings[i]
                show, seat, customer = self.holdings.pop()
            else:  # nothing held: a cancel the show will reject (not reserved / not yours)
                show = self.ids[_pick(self.rng, self.show_cum)]
                seat = seat_label(_pick(self.rng, self.seat_cum))
                customer = self.rng.choice(self.customers)
            return show, CancelReservation(seat, customer), "cancel"
        show = self.ids[_pick(self.rng, self.show_cum)]
        seat = seat_label(_pick(self.rng, self.seat_cum))
        return show, ReserveSeat(seat, self.rng.choice(self.customers)), "reserve"

    def outcome(self, entity_id: str, command: Any, kind: str, accepted: bool) -> None:
        if kind == "reserve" and accepted:
            self.holdings.append((entity_id, command.seat, command.customer))


class _LedgerSource:
    def __init__(self, w: Workload, client: int, rng: random.Random) -> None:
        self.rng = rng
        self.ids = w.entity_ids()
        self.cum = zipf_cum_weights(len(self.ids), w.zipf_s)
        self.client = client
        self.n = 0

    def next(self) -> tuple[str, Any, str]:
        self.n += 1
        return self.ids[_pick(self.rng, self.cum)], Append(f"{self.client}-{self.n}", 1), "append"

    def outcome(self, entity_id: str, command: Any, kind: str, accepted: bool) -> None:
        pass


def live_query(workload: Workload) -> Any:
    """The read-only command that returns an entity's live state (or balance)."""
    return GetShow() if workload.name == "seats" else GetBalance()
