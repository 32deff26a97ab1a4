"""Unit tests of AggregateHost on the in-memory journal (no Ray)."""

from __future__ import annotations

import asyncio
import sys

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
    seat_label,
)
from raysource.journal.errors import ConcurrentWriteError
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.errors import (
    AggregateStoppedError,
    CommandRejected,
    PassivatedError,
    PersistFailedError,
)
from raysource.runtime.host import AggregateHost, ids_matching
from raysource.snapshots.memory import InMemorySnapshotStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_host(journal=None, **kw) -> AggregateHost:
    ser = Serialization()
    SHOW.register_types(ser)
    kw.setdefault("sweep_interval_s", 3600)
    return AggregateHost(SHOW, journal or InMemoryJournal(), InMemorySnapshotStore(), ser, **kw)


def reserved(journal: InMemoryJournal, pid: str) -> list[int]:
    return [e.sequence_nr for e in journal.events(pid)]


async def test_ask_activates_and_replies():
    host = make_host()
    assert await host.ask("s1", ReserveSeat("A1", "alice")) == SeatReserved("A1", "alice")
    with pytest.raises(CommandRejected):
        await host.ask("s1", ReserveSeat("A1", "bob"))
    assert host.active == ["s1"]
    assert host.info()["stats"]["commands"] == 2
    await host.close()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


async def test_ordered_asks_keep_caller_order():
    host = make_host()
    # submit out of order: seq 2, 1, 0 -> processed 0, 1, 2
    tasks = [
        asyncio.ensure_future(host.ask_ordered("s", "c", i, ReserveSeat("A1", f"c{i}")))
        for i in (2, 1, 0)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[2] == SeatReserved("A1", "c0")
    assert all(isinstance(r, CommandRejected) for r in results[:2])
    await host.close()


async def test_idle_sweep_passivates_and_reactivation_recovers():
    clock = Clock()
    journal = InMemoryJournal()
    deactivated = []
    host = make_host(
        journal,
        clock=clock,
        idle_timeout_s=10,
        on_deactivated=lambda e, r: deactivated.append((e, r)),
    )
    await host.ask("s", ReserveSeat("A1", "alice"))
    assert await host.sweep() == 0
    clock.t += 11
    assert await host.sweep() == 1
    assert host.active == [] and deactivated == [("s", "idle")]
    state = await host.ask("s", GetShow())
    assert state.reservations == {"A1": "alice"}
    assert host.stats.activations == 2
    await host.close()


async def test_max_active_evicts_least_recently_used():
    host = make_host(max_active=2)
    await host.ask("a", GetShow())
    await host.ask("b", GetShow())
    await host.ask("a", GetShow())  # b is now least recently used
    await host.ask("c", GetShow())
    await asyncio.sleep(0.01)
    assert sorted(host.active) == ["a", "c"]
    assert host.stats.passivations == {"evicted": 1}
    await host.close()


async def test_command_racing_with_passivation_is_never_lost_nor_doubled():
    journal = InMemoryJournal(latency=0.003)
    host = make_host(journal)
    n, tasks, passivated = 0, [], []
    for _ in range(6):
        for _ in range(8):
            tasks.append(asyncio.ensure_future(host.ask("s", ReserveSeat(seat_label(n), f"c{n}"))))
            n += 1
        # the previous passivation done and a fresh activation up, some commands in flight or
        # queued (a fixed 20 ms sleep was too short for that on a loaded machine)
        while "s" not in host.active or (passivated and not passivated[-1].done()):
            await asyncio.sleep(0.005)
        for _ in range(4):
            tasks.append(asyncio.ensure_future(host.ask("s", ReserveSeat(seat_label(n), f"c{n}"))))
            n += 1
        passivated.append(asyncio.ensure_future(host.passivate("s")))
        for _ in range(4):  # these race with the stop: wait for it, then a fresh activation
            tasks.append(asyncio.ensure_future(host.ask("s", ReserveSeat(seat_label(n), f"c{n}"))))
            n += 1
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r, SeatReserved) for r in results) and len(results) == n
    assert sum(await asyncio.gather(*passivated)) == 6
    events = journal.events(SHOW.persistence_id("s"))
    assert [e.sequence_nr for e in events] == list(range(1, n + 1))
    assert host.stats.activations == 7
    await host.close()


async def test_handoff_stops_matching_entities():
    host = make_host()
    for e in ("a", "b", "c"):
        await host.ask(e, GetShow())
    assert await host.handoff(ids_matching({"a", "c", "zzz"})) == 2
    assert host.active == ["b"]
    await host.close()
    with pytest.raises(PassivatedError):
        await host.ask("b", GetShow())


async def test_gated_handoff_leaves_nothing_of_the_moved_group_running():
    """What a shared host actor does on handoff(shard): close the gate, then handoff. An
    activation in progress, a stop in progress and queued commands of the moved group all end
    before handoff returns; later calls of it are refused (not applied); others go on."""
    gate = asyncio.Event()

    class Slow(InMemoryJournal):
        async def highest_sequence_nr(self, pid):
            if pid.endswith("|a-slow"):
                await gate.wait()  # a recovery that is still running when the handoff starts
            return await super().highest_sequence_nr(pid)

    journal = Slow(latency=0.002)
    moved: set[str] = set()
    host = make_host(
        journal,
        admit=lambda e: (
            AggregateStoppedError(f"{e} moved") if e.startswith("a-") and "a" in moved else None
        ),
    )
    await host.ask("a-1", ReserveSeat("A1", "x"))
    await host.ask("b-1", ReserveSeat("A1", "y"))
    queued = [
        asyncio.ensure_future(host.ask("a-1", ReserveSeat(seat_label(i), "q")))
        for i in range(1, 20)
    ]
    slow = asyncio.ensure_future(host.ask("a-slow", ReserveSeat("A1", "z")))
    stopping = asyncio.ensure_future(host.passivate("b-1"))  # an unrelated stop goes on
    await asyncio.sleep(0)
    assert host.info()["activating"] == 1  # a-slow is recovering
    moved.add("a")  # the gate closes first (the actor revokes the shard)
    handoff = asyncio.ensure_future(host.handoff(lambda e: e.startswith("a-")))
    await asyncio.sleep(0.05)
    assert not handoff.done()  # it waits for the recovery of a-slow
    gate.set()
    assert await handoff == 2  # a-1 and a-slow, each after its queued commands
    assert all(
        r == SeatReserved(seat_label(i), "q")
        for i, r in zip(range(1, 20), await asyncio.gather(*queued))
    )
    assert await slow == SeatReserved("A1", "z")
    assert not [e for e in host.active if e.startswith("a-")]
    with pytest.raises(AggregateStoppedError, match="moved") as refused:
        await host.ask("a-1", ReserveSeat("B1", "late"))
    assert not isinstance(refused.value, PassivatedError)  # refs re-resolve, host lives on
    assert await stopping is True
    assert await host.ask("b-1", ReserveSeat("A2", "y")) == SeatReserved("A2", "y")
    assert len(journal.events(SHOW.persistence_id("a-1"))) == 20  # nothing after the handoff
    await host.close()


async def test_dedicated_mode_never_reactivates():
    host = make_host(reactivate=False)
    await host.ask("s", GetShow())
    await host.passivate("s")
    with pytest.raises(PassivatedError) as err:
        await host.ask("s", GetShow())
    assert isinstance(err.value, AggregateStoppedError)
    await host.close()


async def test_fenced_core_is_dropped_and_next_command_recovers_truth():
    journal = InMemoryJournal()
    host = make_host(journal)
    other = make_host(journal)
    await host.ask("s", ReserveSeat("A1", "alice"))
    await other.ask("s", ReserveSeat("A2", "bob"))  # the other activation writes seq 2
    with pytest.raises(AggregateStoppedError) as err:
        await host.ask("s", ReserveSeat("A3", "carol"))  # stale: fenced
    assert isinstance(err.value.__cause__, ConcurrentWriteError)
    assert host.active == []
    assert host.stats.passivations == {} and host.info()["active"] == 0
    # next command: fresh activation that sees bob's seat
    with pytest.raises(CommandRejected):
        await host.ask("s", ReserveSeat("A2", "dave"))
    assert await host.ask("s", ReserveSeat("A3", "carol")) == SeatReserved("A3", "carol")
    assert reserved(journal, SHOW.persistence_id("s")) == [1, 2, 3]
    await host.close()
    await other.close()


async def test_recoveries_are_bounded():
    class SlowJournal(InMemoryJournal):
        running = 0
        peak = 0

        async def highest_sequence_nr(self, pid):
            SlowJournal.running += 1
            SlowJournal.peak = max(SlowJournal.peak, SlowJournal.running)
            await asyncio.sleep(0.01)
            SlowJournal.running -= 1
            return await super().highest_sequence_nr(pid)

    host = make_host(SlowJournal(), max_concurrent_recoveries=2)
    await asyncio.gather(*(host.ask(f"e{i}", GetShow()) for i in range(10)))
    assert SlowJournal.peak <= 2
    assert len(host.active) == 10
    await host.close()


async def test_failed_recovery_reaches_every_waiter_and_next_try_starts_anew():
    class Broken(InMemoryJournal):
        fail = True

        async def highest_sequence_nr(self, pid):
            if Broken.fail:
                raise ConcurrentWriteError(pid, 0, "boom")
            return await super().highest_sequence_nr(pid)

    host = make_host(Broken())
    results = await asyncio.gather(
        *(host.ask("s", GetShow()) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Exception) for r in results)
    Broken.fail = False
    assert (await host.ask("s", GetShow())).reservations == {}
    await host.close()


async def test_caller_order_survives_passivation():
    journal = InMemoryJournal(latency=0.002)
    host = make_host(journal, order_gap_timeout_s=30)
    await host.ask_ordered("s", "c", 0, ReserveSeat("A1", "x"))
    await host.passivate("s")
    # the same caller continues its numbering on the fresh activation, out of order
    results = await asyncio.wait_for(
        asyncio.gather(
            host.ask_ordered("s", "c", 2, CancelReservation("A1", "x")),
            host.ask_ordered("s", "c", 1, ReserveSeat("A2", "x")),
        ),
        timeout=5,
    )
    assert results == [ReservationCancelled("A1", "x"), SeatReserved("A2", "x")]
    assert host.stats.activations == 2
    await host.close()


async def test_held_back_commands_are_refused_at_once_when_a_dedicated_entity_retires():
    host = make_host(reactivate=False, order_gap_timeout_s=30)
    await host.ask("s", GetShow())
    held = asyncio.ensure_future(host.ask_ordered("s", "c", 1, GetShow()))  # waits for seq 0
    await asyncio.sleep(0.01)
    await host.passivate("s")
    with pytest.raises(PassivatedError):
        await asyncio.wait_for(held, timeout=2)
    await host.close()


# --------------------------------------------------------------------------- caller order
# (the per-caller reorder buffer lives in the host; these were the core's ordering tests)


def make_ledger_host(journal=None, **kw) -> AggregateHost:
    from raysource.examples.ledger import LEDGER

    ser = Serialization()
    LEDGER.register_types(ser)
    kw.setdefault("sweep_interval_s", 3600)
    return AggregateHost(LEDGER, journal or InMemoryJournal(), InMemorySnapshotStore(), ser, **kw)


async def test_many_callers_shuffled_keep_each_callers_order():
    import random

    from raysource.examples.ledger import Append, GetBalance

    host = make_ledger_host(InMemoryJournal(latency=0.002))
    calls = [(c, i) for c in range(5) for i in range(40)]
    random.Random(7).shuffle(calls)
    await asyncio.gather(
        *(host.ask_ordered("l", f"c{c}", i, Append(f"c{c}-{i:02d}")) for c, i in calls)
    )
    assert await host.ask("l", GetBalance()) == 200
    ser = host.serialization
    ops = [
        ser.decode(e.serializer_id, e.manifest, e.payload).op_id
        for e in host.journal.events("ledger|l")
    ]
    for c in range(5):
        mine = [op for op in ops if op.startswith(f"c{c}-")]
        assert mine == [f"c{c}-{i:02d}" for i in range(40)]
    await host.close()


async def test_ordered_duplicates_are_refused_and_gaps_are_skipped_after_the_timeout():
    from raysource.examples.ledger import Append
    from raysource.runtime.errors import CommandError

    host = make_ledger_host(order_gap_timeout_s=0.05)
    assert await host.ask_ordered("l", "c", 0, Append("a")) == 1
    with pytest.raises(CommandError, match="already used"):
        await host.ask_ordered("l", "c", 0, Append("dup"))
    # number 1 never comes: 2 is admitted after the gap timeout
    assert await asyncio.wait_for(host.ask_ordered("l", "c", 2, Append("b", 5)), 1) == 6
    assert await host.ask_ordered("l", "c", 3, Append("c")) == 7
    await host.close()


async def test_a_failed_recovery_is_not_applied_and_the_next_command_recovers():
    """A recovery that fails (the store down at activation) answers the command with
    RecoveryFailedError — a NotAppliedError: nothing was written — and the next command
    activates afresh."""
    from raysource.errors import NotAppliedError, RecoveryFailedError
    from raysource.journal.errors import JournalUnavailableError
    from raysource.testing.faults import FaultyJournal, fail

    journal = FaultyJournal(InMemoryJournal(), [fail("highest", nth=1)])
    host = make_host(journal)
    with pytest.raises(RecoveryFailedError) as failed:
        await host.ask("s", ReserveSeat("A1", "alice"))
    assert isinstance(failed.value, NotAppliedError)
    assert isinstance(failed.value.__cause__, JournalUnavailableError)
    assert journal.inner.events(SHOW.persistence_id("s")) == []
    assert isinstance(await host.ask("s", ReserveSeat("A1", "bob")), SeatReserved)
    assert [e.sequence_nr for e in journal.inner.events(SHOW.persistence_id("s"))] == [1]
    await host.close()


async def test_on_durable_sees_every_acknowledged_append_and_nothing_else():
    """The core calls ``on_durable`` (no journal wrapper) with the events of each append the
    journal acknowledged, before the replies are released; a write that failed is not
    announced; a listener that raises is logged and the command is still acknowledged."""
    journal = InMemoryJournal()
    seen: list[list[int]] = []
    replied: list[bool] = []
    pending: list[asyncio.Future] = []

    def listener(events):
        seen.append([e.sequence_nr for e in events])
        replied.append(any(f.done() for f in pending))
        if len(seen) == 2:
            raise RuntimeError("listener bug")

    host = make_host(journal, on_durable=listener)
    first = asyncio.ensure_future(host.ask("s1", CreateShow(10)))
    pending.append(first)
    await first
    assert seen == [[1]] and replied == [False]  # announced before the reply was released
    await host.ask("s1", ReserveSeat("A1", "alice"))  # the listener raises: still acknowledged
    journal.fail_next_appends(1)
    with pytest.raises(PersistFailedError):
        await host.ask("s1", ReserveSeat("A2", "bob"))
    await host.ask("s1", ReserveSeat("A3", "carol"))
    assert seen == [[1], [2], [3]] == [[n] for n in reserved(journal, SHOW.persistence_id("s1"))]
    assert host.journal is journal  # nothing between the core and the journal
    await host.close()
