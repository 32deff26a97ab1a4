"""Bounded hosts (issue 14): a full mailbox or a full host refuses a call at once with
``OverloadedError`` (not applied) instead of queueing without limit. The journal is held shut
while the callers flood the host, so the queue is as full as it can get; afterwards what the
callers saw is checked against the journal: every reply's event is there, no refused command's
is, and the limits free up again. Ray-free (``AggregateHost`` is the Ray-free engine; the host
actor wraps it unchanged)."""

from __future__ import annotations

import asyncio

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, ReserveSeat, SeatReserved, seat_label
from raysource.journal.errors import ConfigError, NotAppliedError
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.errors import OverloadedError
from raysource.runtime.host import AggregateHost
from raysource.snapshots.memory import InMemorySnapshotStore


class GatedJournal(InMemoryJournal):
    """Appends wait until ``gate`` opens (a frozen store)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0  # appends held at the gate

    async def append(self, events):  # noqa: ANN001
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().append(events)


def _host(journal, **kw) -> AggregateHost:
    ser = Serialization()
    SHOW.register_types(ser)
    return AggregateHost(SHOW, journal, InMemorySnapshotStore(), ser, sweep_interval_s=3600, **kw)


def _seats(journal: InMemoryJournal, show: str) -> set[str]:
    ser = Serialization()
    SHOW.register_types(ser)
    return {
        ser.decode(e.serializer_id, e.manifest, e.payload).seat
        for e in journal.events(SHOW.persistence_id(show))
    }


async def _until(condition, turns: int = 100_000) -> None:
    """Loop turns until ``condition()`` (a budget in turns, not in seconds)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


async def _flood(host, calls):
    tasks = [asyncio.ensure_future(c) for c in calls]
    # every call reached the host: counted in flight or refused; the journal is still shut
    await _until(lambda: host._in_flight_total + host.stats.overloaded == len(tasks))
    return tasks


async def test_full_mailbox_refuses_at_once_and_nothing_refused_is_applied() -> None:
    journal = GatedJournal()
    host = _host(journal, max_mailbox=5)
    seats = [seat_label(i) for i in range(20)]
    tasks = await _flood(host, [host.ask("gala", ReserveSeat(s, "ann")) for s in seats])
    refused = [s for s, t in zip(seats, tasks) if t.done()]
    assert len(refused) == 15  # answered while the store was frozen: not queued
    for s, t in zip(seats, tasks):
        if s in refused:
            assert isinstance(t.exception(), OverloadedError)
            assert isinstance(t.exception(), NotAppliedError)
    journal.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    applied = {s for s, o in zip(seats, done) if o == SeatReserved(s, "ann")}
    assert len(applied) == 5 and applied == _seats(journal, "gala")
    assert not applied & set(refused)
    assert await host.ask("gala", ReserveSeat("C5", "bob")) == SeatReserved("C5", "bob")
    assert host.info()["stats"]["overloaded"] == 15
    await host.close()


async def test_host_wide_limit_across_aggregates() -> None:
    journal = GatedJournal()
    host = _host(journal, max_mailbox=None, max_in_flight=6)
    calls = [(f"show{i}", seat_label(j)) for i in range(10) for j in range(2)]
    tasks = await _flood(host, [host.ask(show, ReserveSeat(seat, "ann")) for show, seat in calls])
    assert sum(t.done() for t in tasks) == 14, [t.exception() for t in tasks if t.done()]
    assert all(isinstance(t.exception(), OverloadedError) for t in tasks if t.done())
    with pytest.raises(OverloadedError):
        await host.state("show0")  # reads count too
    journal.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    applied = [
        (s, seat) for (s, seat), o in zip(calls, outcomes) if not isinstance(o, BaseException)
    ]
    assert len(applied) == 6
    stored = {(f"show{i}", seat) for i in range(10) for seat in _seats(journal, f"show{i}")}
    assert stored == set(applied)
    await host.close()


async def test_batch_beyond_the_mailbox_gets_refusals_as_a_suffix() -> None:
    journal = GatedJournal()
    host = _host(journal, max_mailbox=4)
    seats = [seat_label(i) for i in range(12)]
    batch = asyncio.ensure_future(
        host.ask_many("gala", "caller-1", 0, [ReserveSeat(s, "cy") for s in seats])
    )
    # every command admitted (in flight) or refused, the first flush held at the gate
    await _until(
        lambda: host._in_flight_total + host.stats.overloaded == len(seats) and journal.waiting > 0
    )
    journal.gate.set()
    outcomes = await batch
    kinds = [
        "ok" if o == SeatReserved(s, "cy") else type(o).__name__ for s, o in zip(seats, outcomes)
    ]
    assert kinds == ["ok"] * 4 + ["OverloadedError"] * 8
    assert _seats(journal, "gala") == set(seats[:4])
    await host.close()


def test_limits_are_checked() -> None:
    for bad in ({"max_mailbox": 0}, {"max_in_flight": 0}):
        with pytest.raises(ConfigError):
            _host(InMemoryJournal(), **bad)
    host = _host(InMemoryJournal())
    assert (host.max_mailbox, host.max_in_flight) == (1_000, 10_000)  # bounded by default
    # the Ray host actor's spec carries the same defaults into its AggregateHost
    from raysource.runtime.actors.host_actor import HostSpec

    fields = HostSpec.__dataclass_fields__
    assert (fields["max_mailbox"].default, fields["max_in_flight"].default) == (1_000, 10_000)
