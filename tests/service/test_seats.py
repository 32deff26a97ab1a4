"""The seat-reservation example: domain rules (via the test kit) and concurrency on the core."""

from __future__ import annotations

import asyncio
import random

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import (
    SHOW,
    CancelReservation,
    CreateShow,
    GetShow,
    ReservationCancelled,
    ReserveSeat,
    SeatReserved,
    ShowCreated,
    ShowState,
    seat_index,
    seat_label,
)
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import CommandRejected, UnknownCommandError
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.testkit import AggregateTestKit


@pytest.fixture
def kit():
    with AggregateTestKit(SHOW, entity_id="hamlet-2026-12-01") as k:
        yield k


def test_seat_labels():
    labels = [seat_label(i) for i in (0, 9, 10, 99, 259, 260)]
    assert labels == ["A1", "A10", "B1", "J10", "Z10", "AA1"]
    for i in range(1000):
        assert seat_index(seat_label(i)) == i
    for bad in ["", "A", "1", "A0", "A11", "a1", "A01", "Ä1", "A1x"]:
        assert seat_index(bad) is None, bad


def test_reserve_and_query(kit):
    r = kit.run(ReserveSeat("A1", "alice"))
    assert r.events == (SeatReserved("A1", "alice"),)
    assert r.reply == SeatReserved("A1", "alice")
    q = kit.run(GetShow())
    assert q.events == () and q.reply.reservations == {"A1": "alice"}
    assert q.reply.available == 99
    assert kit.journal.stats["append"] == 1  # the query did not touch the journal


def test_no_double_booking(kit):
    kit.run(ReserveSeat("A1", "alice"))
    r = kit.run(ReserveSeat("A1", "bob"))
    assert r.rejected == "seat A1 is already reserved" and r.events == ()
    assert kit.run(ReserveSeat("A1", "alice")).rejected == "seat A1 is already reserved"
    assert kit.state.holder("A1") == "alice"


def test_unknown_seats_rejected(kit):
    assert kit.run(ReserveSeat("K1", "alice")).rejected == "seat K1 does not exist"  # 100 seats
    assert kit.run(ReserveSeat("A11", "alice")).rejected == "seat A11 does not exist"
    assert kit.run(ReserveSeat("A1", "")).rejected == "a reservation needs a customer"
    assert kit.run(CancelReservation("zz", "alice")).rejected == "seat zz does not exist"


def test_cancel_rules(kit):
    kit.run(ReserveSeat("B5", "alice"))
    assert kit.run(CancelReservation("B5", "bob")).rejected == "seat B5 is not reserved by bob"
    assert kit.run(CancelReservation("B6", "alice")).rejected == "seat B6 is not reserved"
    r = kit.run(CancelReservation("B5", "alice"))
    assert r.events == (ReservationCancelled("B5", "alice"),) and r.state.reservations == {}
    assert kit.run(ReserveSeat("B5", "bob")).ok  # free again
    kit.restart()


def test_create_show(kit):
    r = kit.run(CreateShow(300))
    assert r.events == (ShowCreated(300),) and r.state.seats == 300
    assert kit.run(ReserveSeat("AD10", "alice")).ok  # seat 300
    assert kit.run(ReserveSeat("AE1", "alice")).rejected == "seat AE1 does not exist"
    assert kit.run(CreateShow(5)).rejected == "the show already exists"
    with AggregateTestKit(SHOW) as other:
        other.run(ReserveSeat("A1", "x"))
        assert other.run(CreateShow(5)).rejected == "the show already has reservations"
    with AggregateTestKit(SHOW) as other:
        assert other.run(CreateShow(0)).rejected == "a show needs at least one seat, got 0"


def test_unknown_command(kit):
    r = kit.run("dance")
    assert isinstance(r.error, UnknownCommandError)
    assert kit.run(GetShow()).ok


def test_events_are_tagged_and_manifests_stable(kit):
    kit.run(ReserveSeat("A1", "alice"))
    (stored,) = kit.journal.events(kit.persistence_id)
    assert stored.tags == frozenset({"show"})
    assert stored.manifest == "show.SeatReserved#1"
    assert stored.persistence_id == "show|hamlet-2026-12-01"


def test_snapshot_every_100_events_and_restart(kit):
    for i in range(250):
        seat = seat_label(i % 100)
        if kit.state.holder(seat):
            kit.run(CancelReservation(seat, kit.state.holder(seat)))
        else:
            kit.run(ReserveSeat(seat, f"c{i}"))
    snaps = kit.snapshot_store.snapshots(kit.persistence_id)
    assert [s.sequence_nr for s in snaps] == [100, 200]
    stats = kit.restart()
    assert stats.snapshot_sequence_nr == 200 and stats.events_replayed == 50


async def test_many_callers_hammering_one_show():
    """50 customers race for 20 seats: no double booking, replies match the journal, and group
    commit writes far fewer times than there are commands."""
    ser = Serialization()
    SHOW.register_types(ser)
    journal = InMemoryJournal(latency=0.01)
    core = EntityCore(SHOW, "rush", journal, InMemorySnapshotStore(), ser, writer_id="w")
    await core.start()
    rng = random.Random(1)
    wanted = [(f"cust{c}", seat_label(rng.randrange(20))) for c in range(50) for _ in range(4)]

    async def attempt(customer, seat):
        try:
            return await core.handle(ReserveSeat(seat, customer))
        except CommandRejected as exc:
            return exc

    results = await asyncio.gather(*(attempt(c, s) for c, s in wanted))
    winners = [r for r in results if isinstance(r, SeatReserved)]
    stored = [
        ser.decode(e.serializer_id, e.manifest, e.payload) for e in journal.events("show|rush")
    ]
    assert stored == winners  # every acknowledged reservation is stored, in reply order
    assert len({w.seat for w in winners}) == len(winners)  # no seat twice
    assert len(winners) == len({s for _, s in wanted})
    assert all(
        str(r) == f"seat {s} is already reserved"
        for r, (_, s) in zip(results, wanted)
        if isinstance(r, CommandRejected)
    )
    assert journal.write_count < len(wanted) / 10
    state: ShowState = await core.handle(GetShow())
    assert state.reservations == {w.seat: w.customer for w in winners}
    await core.stop()
