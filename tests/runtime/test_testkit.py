"""The public test kit (sync and async styles, restart equality, serializer round trips)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, GetShow, ReserveSeat, SeatReserved
from raysource.journal.errors import UnserializableError
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, persist, reply
from raysource.runtime.errors import CommandRejected
from raysource.testing.testkit import AggregateTestKit


def test_a_seat_cannot_be_double_booked():
    # the module docstring's example, verbatim
    kit = AggregateTestKit(SHOW)
    first = kit.run(ReserveSeat("A1", "alice"))
    assert first.events == (SeatReserved("A1", "alice"),)
    assert first.state.holder("A1") == "alice"
    second = kit.run(ReserveSeat("A1", "bob"))
    assert second.rejected == "seat A1 is already reserved"
    assert second.events == ()
    kit.restart()  # recovers from the journal; asserts the same state comes back
    kit.close()


def test_run_result_fields_and_given():
    with AggregateTestKit(SHOW, entity_id="gala") as kit:
        kit.given(SeatReserved("B2", "carol"), SeatReserved("B3", "dave"))
        r = kit.run(GetShow())
        assert r.ok and r.events == () and r.reply == r.state
        assert r.state.reservations == {"B2": "carol", "B3": "dave"}
        assert r.unwrap() is r.reply
        bad = kit.run(ReserveSeat("B2", "erin"))
        assert isinstance(bad.error, CommandRejected) and not bad.ok
        with pytest.raises(CommandRejected):
            bad.unwrap()
        assert kit.core.sequence_nr == 2
        stats = kit.restart()
        assert stats.events_replayed == 2


async def test_async_style():
    kit = AggregateTestKit(SHOW)
    await kit.agiven(SeatReserved("A1", "alice"))
    r = await kit.arun(ReserveSeat("A2", "bob"))
    assert r.events == (SeatReserved("A2", "bob"),)
    assert await kit.events() == (SeatReserved("A1", "alice"), SeatReserved("A2", "bob"))
    await kit.arestart()
    assert kit.state.reservations == {"A1": "alice", "A2": "bob"}
    await kit.aclose()


def test_restart_uses_snapshots_and_checks_equality():
    agg = replace(SHOW, snapshot=SnapshotPolicy(every_n_events=3, keep=1))
    with AggregateTestKit(agg) as kit:
        for i in range(1, 8):
            kit.run(ReserveSeat(f"C{i}", "x"))
        assert [s.sequence_nr for s in kit.snapshot_store.snapshots(kit.persistence_id)] == [6]
        stats = kit.restart()
        assert stats.snapshot_sequence_nr == 6 and stats.events_replayed == 1


# --------------------------------------------------------------------------- what the kit catches


@dataclass(frozen=True)
class Put:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Stored:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Bag:
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unknown:
    pass


def bag_decide(state, cmd):
    match cmd:
        case Put(items=items):
            return persist(Stored(items), reply=lambda s: len(s.items))
        case "tuple reply":
            return reply((1, 2))
        case "lossy reply":
            return reply(Bag(["a"]))  # a list where the type says tuple
        case "unregistered reply":
            return reply(Unknown())
    raise AssertionError(cmd)


def bag_apply(state, ev):
    return Bag(state.items + tuple(ev.items))


BAG = AggregateType("bag", Bag(), bag_decide, bag_apply, events=(Stored,), commands=(Put,))


def test_roundtrip_checks_catch_lossy_replies_and_unregistered_types():
    with AggregateTestKit(BAG) as kit:
        assert kit.run(Put(("a", "b"))).reply == 2
        with pytest.raises(UnserializableError, match="read back"):
            kit.run("lossy reply")  # would come back as a tuple from JSON: refused
        with pytest.raises(UnserializableError):
            kit.run("tuple reply")  # plain tuples are not JSON values
        with pytest.raises(UnserializableError):
            kit.run("unregistered reply")
    with AggregateTestKit(BAG, roundtrip=False) as kit:
        assert kit.run("tuple reply").reply == (1, 2)


def test_restart_detects_a_recovery_that_differs():
    calls = {"n": 0}

    def flaky_apply(state, ev):
        calls["n"] += 1
        # a non-pure event handler: recovery gives a different result
        return Bag(state.items + (f"{ev.items[0]}{calls['n']}",))

    agg = replace(BAG, event_handler=flaky_apply)
    with AggregateTestKit(agg, roundtrip=False) as kit:
        kit.run(Put(("a",)))
        with pytest.raises(AssertionError, match="recovered state differs"):
            kit.restart()


def test_kit_on_a_given_journal():
    journal = InMemoryJournal()
    with AggregateTestKit(SHOW, journal=journal) as kit:
        kit.run(ReserveSeat("A1", "alice"))
    assert len(journal.events("show|test-1")) == 1
    with AggregateTestKit(SHOW, journal=journal) as kit2:
        assert kit2.run(GetShow()).state.holder("A1") == "alice"
