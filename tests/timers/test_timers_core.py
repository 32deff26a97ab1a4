"""Durable timers in the entity core and the timer pump (issue 17), in memory (Ray-free): a
schedule is journaled with its events and indexed before the command is answered; a due
timer fires once, through a fresh activation (passivation), and never when cancelled —
also when the cancel and the fire meet in one flush; a fire sent twice is applied once;
replay and snapshots restore pending timers; a failed or interrupted index write is repaired
by the next recovery; the pump paces a backlog and keeps rows whose fire failed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime, timedelta

import pytest
from timer_attack_world import World as AlarmWorld
from unit_guard import no_ray  # noqa: F401

from raysource.errors import (
    CommandRejected,
    ConfigError,
    PersistFailedError,
    TimerNotDueError,
    WriteOutcomeUnknownError,
)
from raysource.examples.seats import (
    SHOW,
    ConfirmHold,
    GetShow,
    HoldReleased,
    HoldSeat,
    ReleaseHold,
    SeatHeld,
    SeatReserved,
)
from raysource.runtime.aggregate import SnapshotPolicy, persist, schedule
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.runtime.timers import FIRED_FIELD, TimerFire, fire_key
from raysource.sharding.timer_pump import TimerPump, TimerSettings
from raysource.timers.memory import InMemoryTimerStore

SER = serialization_for(SHOW, StoreSpec())


class FlakyTimerStore(InMemoryTimerStore):
    """Upserts fail ``fail`` times, or hang while ``gate`` is set up and not released."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0
        self.gate: asyncio.Event | None = None

    async def upsert(self, rows):
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise PersistFailedError("timer index unavailable")
        await super().upsert(rows)


class World(AlarmWorld):
    """The attack tests' world (tests/support/timer_attack_world.py) around the seat example, with
    the
    pump's default retry delay."""

    def __init__(self, agg=SHOW, store=None) -> None:
        super().__init__(agg, store=store)

    def pump(self, **settings) -> TimerPump:
        return super().pump(**{"retry_after_s": TimerSettings().retry_after_s, **settings})

    passivate = AlarmWorld.restart


def _types(events) -> list[str]:
    return [e.manifest.rsplit(".", 1)[-1].split("#")[0] for e in events]


def test_a_hold_fires_after_passivation_once_and_is_journaled_with_its_event() -> None:
    async def main():
        w = World()
        held = await w.core("s1").handle(HoldSeat("A1", "ann", 60))
        assert held == SeatHeld("A1", "ann", 60.0)
        [row] = w.store.rows()  # indexed before the reply
        assert row.timer_id == "hold-A1@1" and row.due_ms == w.clock.ms() + 60_000
        stored = await w.events("s1")
        assert "ts" in stored[0].metadata  # in the same append as SeatHeld
        await w.passivate()
        pump = w.pump()
        assert await pump.run_once() == 0  # not due yet
        w.clock.now += timedelta(seconds=61)
        assert await pump.run_once() == 1
        await pump.drain()
        assert w.activations == 2  # a fresh activation received the fire
        state = await w.core("s1").handle(GetShow())
        assert state.holds == {} and state.available == 100
        events = await w.events("s1")
        assert _types(events) == ["SeatHeld", "HoldReleased"]
        assert events[1].metadata[FIRED_FIELD] == "hold-A1@1"
        assert w.store.rows() == []  # answered: the row is gone
        assert pump.info()["fired"] == 1 and pump.info()["lateness_ms"]["max"] == 1000
        assert await pump.run_once() == 0  # nothing left

    asyncio.run(main())


def test_a_cancelled_timer_never_fires_even_when_its_row_is_left_behind() -> None:
    async def main():
        w = World()
        core = w.core("s1")
        await core.handle(HoldSeat("A1", "ann", 60))
        [row] = w.store.rows()
        assert await core.handle(ConfirmHold("A1", "ann")) == SeatReserved("A1", "ann")
        assert w.store.rows() == []  # the cancel deleted the row
        await w.store.upsert([row])  # as if that delete had been lost
        w.clock.now += timedelta(minutes=5)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert core.stats.stale_fires == 1 and core.stats.timers_fired == 0
        assert _types(await w.events("s1")) == ["SeatHeld", "SeatReserved"]
        assert (await core.handle(GetShow())).reservations == {"A1": "ann"}
        assert w.store.rows() == []  # a stale fire removes its row too

    asyncio.run(main())


def test_a_cancel_and_a_fire_in_one_flush_and_a_fire_sent_twice_apply_at_most_once() -> None:
    async def main():
        w = World()
        core = w.core("s1")
        await core.handle(HoldSeat("A1", "ann", 0))
        await core.handle(HoldSeat("A2", "bob", 0))
        fire1, fire2 = TimerFire("hold-A1", "hold-A1@1"), TimerFire("hold-A2", "hold-A2@2")
        # one flush: confirm A1 first, then A1's fire (stale), A2's fire twice (plain, so
        # the idempotency table does not hide the second one)
        results = await asyncio.gather(
            core.handle(ConfirmHold("A1", "ann")),
            core.handle(fire1),
            core.handle(fire2),
            core.handle(fire2),
        )
        assert results[0] == SeatReserved("A1", "ann")
        assert results[1] is None  # stale
        assert results[2] == HoldReleased("A2", "bob") and results[3] is None
        assert core.stats.flushes == 3  # the four went in one flush
        # and once more after a restart: the journal says A2's timer fired
        await w.passivate()
        assert await w.core("s1").handle(fire2) is None
        assert _types(await w.events("s1")) == [
            "SeatHeld",
            "SeatHeld",
            "SeatReserved",
            "HoldReleased",
        ]

    asyncio.run(main())


def test_replay_and_snapshots_restore_pending_timers() -> None:
    async def main():
        agg = dataclasses.replace(SHOW, snapshot=SnapshotPolicy(every_n_events=2, keep=1))
        w = World(agg)
        core = w.core("s1")
        await core.handle(HoldSeat("A1", "ann", 30))
        await core.handle(HoldSeat("B1", "bob", 90))  # snapshot at #2 (with both timers)
        assert len(core.timers) == 2
        await w.passivate()
        # only the snapshot can bring the timers back once the events are gone
        await w.journal.delete_to(agg.persistence_id("s1"), 2)
        again = w.core("s1")
        await again.start()
        assert again.recovery.snapshot_sequence_nr == 2
        assert [t["name"] for t in again.timers.info()] == ["hold-A1", "hold-B1"]
        w.clock.now += timedelta(seconds=45)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        state = await w.core("s1").handle(GetShow())
        assert state.holds == {"B1": "bob"}  # A1 released, B1 not due yet

    asyncio.run(main())


def test_a_failed_index_write_is_repaired_before_the_reply() -> None:
    async def main():
        store = FlakyTimerStore()
        w = World(store=store)
        store.fail = 1  # the write after the append fails; the rebuild's repair succeeds
        assert await w.core("s1").handle(HoldSeat("A1", "ann", 10)) == SeatHeld("A1", "ann", 10.0)
        assert [r.name for r in store.rows()] == ["hold-A1"]
        store.fail = 2  # the write and the repair fail: stored, but the outcome is unknown
        with pytest.raises(WriteOutcomeUnknownError) as err:
            await w.core("s1").handle(HoldSeat("A2", "bob", 10))
        assert type(err.value) is WriteOutcomeUnknownError, repr(err.value)
        assert "events stored, their timer index write failed" in str(err.value), str(err.value)
        await w.passivate()  # the next activation indexes the newest group
        await w.core("s1").start()
        assert sorted(r.name for r in store.rows()) == ["hold-A1", "hold-A2"]

    asyncio.run(main())


def test_a_writer_that_dies_between_append_and_index_is_repaired_by_the_next_recovery() -> None:
    async def main():
        store = FlakyTimerStore()
        store.gate = asyncio.Event()  # the index write never finishes
        w = World(store=store)
        task = asyncio.ensure_future(w.core("s1").handle(HoldSeat("A1", "ann", 10)))
        await asyncio.sleep(0.05)
        assert _types(await w.events("s1")) == ["SeatHeld"] and not task.done()
        w.cores["s1"]._task.cancel()  # the activation dies here
        task.cancel()
        w.cores.clear()
        store.gate = None
        core = w.core("s1")
        await core.start()
        assert [r.timer_id for r in store.rows()] == ["hold-A1@1"]
        w.clock.now += timedelta(seconds=11)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert _types(await w.events("s1")) == ["SeatHeld", "HoldReleased"]

    asyncio.run(main())


def test_an_early_fire_runs_nothing_and_a_user_key_cannot_shadow_a_fire() -> None:
    async def main():
        w = World()
        core = w.core("s1")
        await core.handle(HoldSeat("A1", "ann", 60))
        fire = TimerFire("hold-A1", "hold-A1@1")
        with pytest.raises(TimerNotDueError):  # forged, or a service clock ahead: not run
            await core.handle(Keyed(fire, fire_key(fire.timer_id)))
        with pytest.raises(ConfigError):  # the fire's key is reserved for the fire
            await core.handle(Keyed(ReleaseHold("A1", "ann"), fire_key(fire.timer_id)))
        assert [t["name"] for t in core.timers.info()] == ["hold-A1"]  # still pending
        assert _types(await w.events("s1")) == ["SeatHeld"]
        w.clock.now += timedelta(seconds=60)
        assert await core.handle(Keyed(fire, fire_key(fire.timer_id))) == HoldReleased("A1", "ann")

    asyncio.run(main())


def test_schedule_errors_are_typed_and_write_nothing() -> None:
    with pytest.raises(ConfigError):
        persist(schedule=schedule("x", ReleaseHold("A1", "a"), after=1))  # no event
    with pytest.raises(ConfigError):
        schedule("x", ReleaseHold("A1", "a"))  # neither after nor at
    with pytest.raises(ConfigError):
        schedule("x", ReleaseHold("A1", "a"), after=float("nan"))
    with pytest.raises(ConfigError):
        schedule("x", ReleaseHold("A1", "a"), at=datetime(2027, 1, 1))  # naive

    async def main():
        w = World()
        with pytest.raises(CommandRejected):
            await w.core("s1").handle(HoldSeat("A1", "ann", -1))
        assert await w.events("s1") == [] and w.store.rows() == []

    asyncio.run(main())


def test_the_pump_paces_a_backlog_and_keeps_rows_whose_fire_failed() -> None:
    async def main():
        w = World()
        for i in range(20):
            core = w.core(f"s{i}")
            for seat in ("A1", "A2", "A3", "A4", "A5"):
                await core.handle(HoldSeat(seat, "c", 1))
        w.clock.now += timedelta(hours=1)  # downtime: 100 fires overdue
        calls = []
        real_send = w.send

        async def send(t, pid, fires):
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise ConnectionError("host unreachable")  # this aggregate's fires stay due
            return await real_send(t, pid, fires)

        pump = w.pump(max_fires_per_s=50, retry_after_s=0.01)
        pump.send = send
        started = time.monotonic()
        await pump.run_once()
        await pump.drain()
        took = time.monotonic() - started
        assert took >= 1.0  # 100 fires at 50/s (a bucket of 50 to start): >= 1 s, not at once
        assert pump.info()["fired"] == 95 and pump.info()["retried"] == 5
        await asyncio.sleep(0.02)
        await pump.run_once()
        await pump.drain()
        assert pump.info()["fired"] == 100 and w.store.rows() == []
        for i in range(20):
            assert (await w.core(f"s{i}").handle(GetShow())).holds == {}

    asyncio.run(main())
