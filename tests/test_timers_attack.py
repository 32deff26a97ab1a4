"""A hostile second read of durable timers (issue 17), in memory and Ray-free: every test
tries to break one promise of :mod:`raysource.runtime.timers` / :mod:`raysource.timers.api`
with the fault kit, duplicate and racing fires, snapshots and odd input, and checks what the
callers saw against the journal, the pending-timer table and the index.

The aggregate (an "alarm") makes every application of a timer's command visible: a fired
``Ring(op, name)`` persists ``Rang(op, name)``, so the same value stored twice is a command
applied twice. The invariant :func:`check_agreement` compares, after recovery, the table
folded from the journal (``TimerTable.applied``), the live activation's table and the index
rows (each pending timer has a row the pump can reach: in a bucket at or after its cursor).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from raysource.errors import (
    CommandRejected,
    ConfigError,
    HandlerError,
    NotAppliedError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    PersistFailedError,
    RaysourceError,
    UnserializableError,
    WriteOutcomeUnknownError,
)
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.aggregate import (
    AggregateType,
    IdempotencyPolicy,
    SnapshotPolicy,
    none,
    persist,
    reject,
    reply,
    schedule,
    unknown_command,
)
from raysource.runtime.core import EntityCore
from raysource.runtime.idempotency import Keyed
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.runtime.timers import TimerFire, TimerTable, fire_key
from raysource.sharding.timer_pump import TimerPump, TimerSettings
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.faults import (
    FaultyJournal,
    delay,
    duplicate,
    fail,
    interleave,
    lose_response,
    tag_crash,
    timeout,
)
from raysource.timers.memory import InMemoryTimerStore
from unit_guard import no_ray  # noqa: F401

T0 = datetime(2026, 12, 1, 8, 0, 30, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the aggregate


@dataclass(frozen=True)
class Arm:
    """Schedule ``timers`` ((name, after seconds) pairs) and cancel ``cancel``, in one
    persist of ``Armed(op)``."""

    op: str
    timers: tuple[tuple[str, float], ...] = ()
    cancel: tuple[str, ...] = ()
    again: float = 0.0  # the timers' Ring re-schedules itself this many s later (recurring)


@dataclass(frozen=True)
class ArmAt:
    op: str
    name: str
    at_ms: int


@dataclass(frozen=True)
class Ring:
    """A timer's command: persists ``Rang(op, name)`` (``quiet``: writes nothing)."""

    op: str
    name: str
    quiet: bool = False
    again: float = 0.0  # > 0: re-schedule itself under the same name, this many s later


@dataclass(frozen=True)
class Poke:
    op: str


@dataclass(frozen=True)
class Get:
    pass


@dataclass(frozen=True)
class Armed:
    op: str


@dataclass(frozen=True)
class Rang:
    op: str
    name: str


@dataclass(frozen=True)
class Poked:
    op: str


@dataclass(frozen=True)
class Unregistered:
    x: int


@dataclass(frozen=True)
class Opaque:
    """Registered, but its field holds something JSON cannot carry."""

    x: object


@dataclass(frozen=True)
class AlarmState:
    log: tuple[str, ...] = ()


def handle(state: AlarmState, command: object):
    match command:
        case Arm(op=op, timers=timers, cancel=cancel, again=again):
            return persist(Armed(op), reply=op, cancel=cancel,
                           schedule=[schedule(n, Ring(op, n, again=again), after=a)
                                     for n, a in timers])
        case ArmAt(op=op, name=name, at_ms=at_ms):
            at = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
            return persist(Armed(op), reply=op, schedule=schedule(name, Ring(op, name), at=at))
        case Ring(op=op, name=name, quiet=quiet, again=again):
            if quiet:
                return none()
            more = (schedule(name, Ring(op, name, again=again), after=again),) if again else ()
            return persist(Rang(op, name), reply=f"rang {op}/{name}", schedule=more)
        case Poke(op=op):
            if op == "reject":
                return reject("no")
            return persist(Poked(op), reply=op)
        case Get():
            return reply(state)
        case _:
            unknown_command(command, "alarm")


def apply(state: AlarmState, event: object) -> AlarmState:
    match event:
        case Armed(op=op):
            return AlarmState(state.log + (f"armed:{op}",))
        case Rang(op=op, name=name):
            return AlarmState(state.log + (f"rang:{op}/{name}",))
        case Poked(op=op):
            return AlarmState(state.log + (f"poked:{op}",))
    raise TypeError(event)


ALARM = AggregateType(
    name="alarm", initial_state=AlarmState(), command_handler=handle, event_handler=apply,
    events=(Armed, Rang, Poked), commands=(Arm, ArmAt, Ring, Poke, Get),
    types=(AlarmState, Opaque), number_of_shards=4)
NO_KEYS = dataclasses.replace(ALARM, idempotency=IdempotencyPolicy(enabled=False))


# --------------------------------------------------------------------------- the world


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def ms(self) -> int:
        return int(self.now.timestamp() * 1000)


class World:
    """A (faulty) journal, stores and activations by entity id; fires go through ``send``
    like a timer service's (keyed ``timer:<id>`` when the type keeps keys)."""

    def __init__(self, agg: AggregateType = ALARM, faults=(), store=None, seed=None,
                 journal=None) -> None:
        self.agg = agg
        self.clock = Clock()
        self.journal = FaultyJournal(journal or InMemoryJournal(), faults, seed=seed)
        self.snaps = InMemorySnapshotStore()
        self.store = store if store is not None else InMemoryTimerStore()
        self.ser = serialization_for(agg, StoreSpec())
        self.cores: dict[str, EntityCore] = {}
        self.activations = 0

    def core(self, eid: str = "e1") -> EntityCore:
        if eid not in self.cores or self.cores[eid].stopped:
            self.activations += 1
            self.cores[eid] = EntityCore(self.agg, eid, self.journal, self.snaps,
                                         serialization_for(self.agg, StoreSpec()),
                                         writer_id=f"w{self.activations}",
                                         wall_clock=self.clock, timer_store=self.store)
        return self.cores[eid]

    async def restart(self) -> None:
        """Drop every activation (a crash: nothing is drained that was not already)."""
        for c in self.cores.values():
            await c.stop()
        self.cores.clear()

    def fire_of(self, f: TimerFire):
        return Keyed(f, fire_key(f.timer_id)) if self.agg.idempotency.enabled else f

    async def send(self, type_name: str, pid: str, fires: list[TimerFire]) -> list:
        core = self.core(pid.split("|", 1)[1])
        return list(await asyncio.gather(*(core.handle(self.fire_of(f)) for f in fires),
                                         return_exceptions=True))

    def pump(self, **settings) -> TimerPump:
        shards = [(self.agg.name, s) for s in range(self.agg.number_of_shards)]

        async def owned():
            return shards

        return TimerPump(self.store, self.send, owned,
                         TimerSettings(**{"retry_after_s": 0.001, **settings}),
                         wall_ms=self.clock.ms)

    async def events(self, eid: str = "e1") -> list:
        self.journal.faults_enabled = False
        try:
            return [e async for e in self.journal.replay(self.agg.persistence_id(eid))]
        finally:
            self.journal.faults_enabled = True

    async def decoded(self, eid: str = "e1") -> list:
        return [self.ser.decode(e.serializer_id, e.manifest, e.payload)
                for e in await self.events(eid)]

    async def rings(self, eid: str = "e1") -> Counter:
        return Counter((e.op, e.name) for e in await self.decoded(eid) if isinstance(e, Rang))

    async def journal_table(self, eid: str = "e1") -> TimerTable:
        """The pending timers the journal says (a fresh fold of every event's metadata)."""
        table = TimerTable(self.ser, self.agg.name, self.agg.persistence_id(eid), 0)
        for e in await self.events(eid):
            table.applied(e)
        return table

    async def fire_everything(self, eid: str = "e1", *, rounds: int = 6) -> TimerPump:
        """Move the clock far past every due time and pump until the index is quiet."""
        self.clock.now += timedelta(days=2)
        pump = self.pump()
        for _ in range(rounds):
            await pump.run_once()
            await pump.drain()
            await asyncio.sleep(0.002)  # past retry_after_s
        return pump


async def check_agreement(w: World, eid: str = "e1") -> dict[str, str]:
    """After recovery: the live table equals the journal's fold, and every pending timer has
    an index row with its id that the pump can reach. Returns {name: timer id}. (Not for
    timers whose fire wrote nothing: a snapshot, not the journal, records those.)"""
    core = w.core(eid)
    await core.start()
    want = {p.name: p.timer_id for p in (await w.journal_table(eid)).pending.values()}
    have = {p.name: p.timer_id for p in core.timers.pending.values()}
    assert have == want, f"live table {have} != journal {want}"
    pid = w.agg.persistence_id(eid)
    for name, tid in want.items():
        rows = [r for r in w.store.rows() if r.persistence_id == pid and r.timer_id == tid]
        assert rows, f"pending timer {tid} has no index row"
        cursor = await w.store.cursor(w.agg.name, rows[0].shard)
        assert cursor is not None and any(r.bucket >= cursor for r in rows), \
            f"{tid}: its rows {rows} lie behind the cursor {cursor}: the pump never reads them"
    return want


async def attempt(call) -> str:
    try:
        await call
        return "ok"
    except CommandRejected:
        return "rejected"
    except NotAppliedError:
        return "not_applied"
    except OutcomeUnknownError:
        return "unknown"


# --------------------------------------------------------------------------- 1. atomicity

ARM1 = Arm("op1", timers=(("a", 60), ("b", 60)))
ARM2 = Arm("op2", timers=(("c", 60), ("a", 120)), cancel=("b",))  # replace a, cancel b


@pytest.mark.parametrize("fault", [
    fail(nth=2), lose_response(nth=2), duplicate(nth=2), timeout(nth=2),
    timeout(nth=2, land=0.01), tag_crash(nth=2), delay(0, nth=2)], ids=str)
def test_a_faulty_append_never_splits_a_schedule_from_its_events(fault) -> None:
    """Whatever the second append does, after recovery the table, the journal and the index
    agree, and firing everything rings exactly the journal's pending timers, once each."""
    async def main():
        w = World(faults=[fault])
        assert await attempt(w.core().handle(ARM1)) == "ok"
        seen = await attempt(w.core().handle(ARM2))
        await asyncio.sleep(0.05)  # a late write lands meanwhile
        await w.restart()
        stored = "armed:op2" in (await w.core().handle(Get())).log
        assert seen != "ok" or stored, "an acknowledged schedule was lost"
        assert seen != "not_applied" or not stored, "a failed schedule was stored"
        pending = await check_agreement(w)
        want = ({"a": "a@2", "c": "c@2"} if stored else {"a": "a@1", "b": "b@1"})
        assert pending == want
        await w.fire_everything()
        op = "op2" if stored else "op1"  # ARM1 is #1, ARM2 #2: the ids name their command
        assert await w.rings() == Counter({(op, name): 1 for name in want})
        assert w.store.rows() == [], "a fired (or stale) timer's row was left in the index"
        await w.restart()
        assert await check_agreement(w) == {}
    asyncio.run(main())


def test_a_write_that_lands_after_the_next_recovery_is_indexed_by_a_later_one() -> None:
    """A timed-out append that lands only after the next activation recovered: its schedule
    is in the journal but was never indexed; the fence at the next write stops that
    activation and the one after repairs the group (still the newest)."""
    async def main():
        gate = asyncio.Event()
        w = World(faults=[timeout(nth=2, land=gate)])
        await w.core().handle(ARM1)
        assert await attempt(w.core().handle(ARM2)) == "unknown"
        await w.restart()
        await w.core().start()  # recovers without op2
        gate.set()
        await asyncio.sleep(0.01)  # op2 lands now, behind the new activation's back
        assert await attempt(w.core().handle(Poke("p"))) == "not_applied"  # fenced
        await w.restart()
        assert await check_agreement(w) == {"a": "a@2", "c": "c@2"}
    asyncio.run(main())


# --------------------------------------------------------------------------- 2. at most once


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_duplicate_fires_in_every_arrangement_apply_once(agg) -> None:
    """The same fire sent twice in one flush, in two flushes, after a restart, after a
    snapshot and by two pumps at once: one Rang per timer, whether or not the type keeps
    idempotency keys."""
    async def main():
        w = World(dataclasses.replace(agg, snapshot=SnapshotPolicy(every_n_events=1, keep=1)))
        core = w.core()
        await core.handle(Arm("o", timers=(("a", 0), ("b", 0), ("c", 0), ("d", 0))))
        fa, fb, fc, fd = (TimerFire(n, f"{n}@1") for n in "abcd")
        one = await asyncio.gather(*(core.handle(w.fire_of(fa)) for _ in range(3)))
        assert one.count("rang o/a") >= 1 and set(one) <= {"rang o/a", None}
        assert await core.handle(w.fire_of(fb)) == "rang o/b"  # two flushes
        assert await core.handle(w.fire_of(fb)) in ("rang o/b", None)
        await w.restart()  # after a restart (and the snapshot every event takes)
        assert await w.core().handle(w.fire_of(fa)) in ("rang o/a", None)
        await w.restart()
        w.snaps = InMemorySnapshotStore()  # no snapshot: the journal's "tf" alone
        assert await w.core().handle(w.fire_of(fb)) in ("rang o/b", None)
        # c and d: two pumps over the same index at the same time
        w.clock.now += timedelta(seconds=1)
        p1, p2 = w.pump(), w.pump()
        await asyncio.gather(p1.run_once(), p2.run_once())
        await asyncio.gather(p1.drain(), p2.drain())
        await w.restart()
        assert await w.rings() == Counter({("o", n): 1 for n in "abcd"})
        assert await check_agreement(w) == {}
    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
@pytest.mark.parametrize("same_flush", [True, False], ids=["one-flush", "two-flushes"])
def test_a_fire_racing_a_cancel_or_a_reschedule_never_runs_the_old_command(agg,
                                                                          same_flush) -> None:
    """Cancel x, replace y (same name, new id), then the old fires of x and y arrive (and
    the new y's fire twice): only the new y rings, once."""
    async def main():
        w = World(agg)
        core = w.core()
        await core.handle(Arm("o1", timers=(("x", 0), ("y", 0))))
        cmds = [Arm("o2", timers=(("y", 0),), cancel=("x",)),
                w.fire_of(TimerFire("x", "x@1")), w.fire_of(TimerFire("y", "y@1")),
                w.fire_of(TimerFire("y", "y@2")), w.fire_of(TimerFire("y", "y@2"))]
        if same_flush:
            out = await asyncio.gather(*(core.handle(c) for c in cmds))
        else:
            out = [await core.handle(c) for c in cmds]
        assert out[:3] == ["o2", None, None] and sorted(out[3:], key=str) in (
            [None, "rang o2/y"], ["rang o2/y", "rang o2/y"])
        await w.fire_everything()
        assert await w.rings() == Counter({("o2", "y"): 1})
        await w.restart()
        assert await check_agreement(w) == {}
    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_a_recurring_timer_rescheduled_by_its_own_fire_runs_once_per_round(agg) -> None:
    """Ring(again=10) re-schedules its own name from its fire (new id, same name, in the
    event that journals the fire); each round's fire delivered four times (twice in one
    flush, once more later, once after a restart) rings once per round."""
    async def main():
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("r", 0),), again=10))
        tids = []
        for _ in range(3):
            tid = (await check_agreement(w))["r"]
            tids.append(tid)
            core = w.core()
            f = w.fire_of(TimerFire("r", tid))
            await asyncio.gather(core.handle(f), core.handle(f))
            await core.handle(f)
            await w.restart()
            await w.core().handle(f)
        assert len(set(tids)) == 3
        assert await w.rings() == Counter({("o", "r"): 3})
        assert len(await w.events()) == 4
    asyncio.run(main())


# --------------------------------------------------------------------------- 4. the index


def test_a_far_future_first_timer_does_not_hide_nearer_ones_of_its_shard() -> None:
    """The shard's first ever row is a year ahead; a timer due in a minute, written after it
    into the same shard, still fires on time (the cursor must not start at the first row's
    bucket)."""
    async def main():
        w = World()
        await w.core().handle(Arm("far", timers=(("year", 365 * 86400),)))
        await w.core().handle(Arm("near", timers=(("minute", 60),)))
        await check_agreement(w)
        w.clock.now += timedelta(seconds=61)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("near", "minute"): 1})
    asyncio.run(main())


def test_a_slow_append_does_not_put_its_row_behind_the_cursor() -> None:
    """The bucket is chosen from the flush's timestamp; the append then takes 3 minutes (a
    stalled store) while the pump moves the cursor past that (empty, settled) bucket. The row
    written afterwards must still be reachable."""
    async def main():
        w = World()
        other = next(f"o{i}" for i in range(100) if shard_of(f"o{i}", 4) == shard_of("e1", 4))
        await w.core(other).handle(Arm("x", timers=(("t", 0),)))  # the shard's cursor: now
        pump = w.pump()

        async def meanwhile():
            for _ in range(3):
                w.clock.now += timedelta(minutes=1)
                await pump.run_once()
                await pump.drain()

        w.journal.add(interleave(meanwhile, nth=2))
        await w.core().handle(Arm("slow", timers=(("s", 0),)))
        await check_agreement(w)
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("slow", "s"): 1})
        assert await w.rings(other) == Counter({("x", "t"): 1})
    asyncio.run(main())


def test_a_writer_whose_clock_lags_within_the_settle_time_is_not_lost() -> None:
    """The writer's clock is 40 s behind the pump's (inside the 60 s settle time)."""
    async def main():
        w = World()
        writer = Clock()
        writer.now = w.clock.now - timedelta(seconds=40)
        core = EntityCore(ALARM, "e1", w.journal, w.snaps, w.ser, writer_id="skewed",
                          wall_clock=writer, timer_store=w.store)
        await core.handle(Arm("x", timers=(("t", 1),)))
        pump = w.pump()
        for _ in range(4):  # the pump's clock runs on; the row is due (by the writer's
            w.clock.now += timedelta(seconds=30)  # clock) long before
            await pump.run_once()
        await core.stop()
        await pump.drain()
        assert await w.rings() == Counter({("x", "t"): 1})
    asyncio.run(main())


def test_one_persist_scheduling_a_name_twice_is_refused_and_writes_nothing() -> None:
    """schedule=[a after 10 s, a after 1000 s] in one persist gave both entries the id
    "a@1": the index kept the first one's row, which then ran the second one's command at
    10 s. Now it is a typed error at the caller (nothing written, the aggregate goes on)."""
    with pytest.raises(ConfigError, match="twice"):
        persist(Armed("o"), schedule=[schedule("a", Ring("o", "a"), after=10),
                                      schedule("a", Ring("o", "a"), after=1000)])

    async def main():
        w = World()
        with pytest.raises(HandlerError, match="twice"):
            await w.core().handle(Arm("o", timers=(("a", 10), ("a", 1000))))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("o2", timers=(("a", 10),))) == "o2"
        w.clock.now += timedelta(seconds=20)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("o2", "a"): 1})
    asyncio.run(main())


def test_two_commands_in_one_flush_scheduling_one_name_leave_no_live_row_of_the_first() -> None:
    """Two commands of one flush schedule "a" (the second replaces the first): the index must
    not keep the first one's row (deleted before it was written)."""
    async def main():
        w = World()
        core = w.core()
        await asyncio.gather(core.handle(Arm("o1", timers=(("a", 10),))),
                             core.handle(Arm("o2", timers=(("a", 1000),))))
        assert core.stats.writes == 1
        assert [r.timer_id for r in w.store.rows()] == ["a@2"]
    asyncio.run(main())


# --------------------------------------------------------------------------- 3. snapshots

SNAP_EVERY = [1, 2, 3]
SCRIPT = [Arm("s1", timers=(("a", 50), ("b", 60))), Poke("p1"),
          Arm("s2", timers=(("c", 70), ("a", 80)), cancel=("b",)), Poke("p2"),
          Arm("s3", cancel=("c",)), Arm("s4", timers=(("d", 90),))]


@pytest.mark.parametrize("every", SNAP_EVERY)
def test_replay_from_any_snapshot_restores_exactly_the_pending_timers(every) -> None:
    """Snapshots every N events; after every command a restart (from the newest snapshot, from
    an undecodable newest one, and from the journal alone) restores the same table."""
    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=every, keep=3))
        w = World(agg)
        for cmd in SCRIPT:
            await w.core().handle(cmd)
            await w.restart()
            want = await check_agreement(w)
            await w.restart()
            newest = await w.snaps.load(agg.persistence_id("e1"))
            if newest is not None:  # the newest snapshot cannot be decoded: an older one
                await w.snaps.save(dataclasses.replace(newest, payload=b"\x00garbage"))
                assert await check_agreement(w) == want
                await w.restart()
                await w.snaps.save(newest)
        assert want == {"a": "a@3", "d": "d@6"}
        await w.fire_everything()
        assert await w.rings() == Counter({("s2", "a"): 1, ("s4", "d"): 1})
    asyncio.run(main())


def test_a_snapshot_newer_than_the_journal_is_ignored_with_its_timers() -> None:
    """A snapshot claims #50 (with a pending timer "ghost") but the journal ends at #2:
    the full replay must not keep the snapshot's timers."""
    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=1, keep=1))
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("ghost", 10),)))
        await w.core().handle(Arm("o2", cancel=("ghost",), timers=(("real", 10),)))
        await w.restart()
        snap = await w.snaps.load(agg.persistence_id("e1"))
        core = w.core()
        await core.start()
        ser_id, manifest, payload = core.keys.wrap_snapshot(
            *w.ser.encode(AlarmState(("armed:o",))), timers=[
                ["ghost", "ghost@1", T0.timestamp() * 1000, 0, "x"]])
        await w.restart()
        await w.snaps.save(dataclasses.replace(snap, sequence_nr=50, payload=payload,
                                               manifest=manifest, serializer_id=ser_id))
        assert await check_agreement(w) == {"real": "real@2"}
    asyncio.run(main())


def test_a_snapshot_whose_timer_list_is_corrupt_falls_back_like_an_undecodable_one() -> None:
    """The envelope decodes but its timer entries do not (wrong arity): recovery must fall
    back to an older snapshot / the journal, as for an undecodable state, not die."""
    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=1, keep=2))
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("a", 10),)))
        core = w.core()
        snap = await w.snaps.load(agg.persistence_id("e1"))
        ser_id, manifest, payload = core.keys.wrap_snapshot(
            *w.ser.encode(core.state), timers=[["a", "a@1"]])  # two of five fields
        await w.restart()
        await w.snaps.save(dataclasses.replace(snap, payload=payload, manifest=manifest,
                                               serializer_id=ser_id))
        assert await check_agreement(w) == {"a": "a@1"}
        assert w.core().recovery.snapshots_skipped == 1
    asyncio.run(main())


# --------------------------------------------------------------------------- 5. bad input


@pytest.mark.parametrize("kw", [
    dict(after=1e12), dict(after=10**30), dict(after=2**1100), dict(after=float("inf")),
    dict(after=float("nan")), dict(after=-1), dict(after=True), dict(after="5"),
    dict(at=datetime(2030, 1, 1)), dict(at="2030-01-01T00:00:00Z"), dict(),
    dict(after=1, at=T0), dict(name="n" * 201, after=1), dict(name="", after=1),
    dict(name=7, after=1)], ids=lambda kw: ",".join(f"{k}={str(v)[:12]}" for k, v in kw.items()))
def test_weird_schedule_values_are_config_errors_at_once(kw) -> None:
    name = kw.pop("name", "x")
    with pytest.raises(ConfigError):
        schedule(name, Ring("o", "x"), **kw)


def _scheduling(command=None, **kw):
    """ALARM whose Poke schedules ``command`` under "x" (``kw``: after= or at=)."""
    def h(state, c):
        if isinstance(c, Poke):
            return persist(Poked(c.op), reply=c.op, schedule=schedule("x", command, **kw))
        return handle(state, c)
    return dataclasses.replace(ALARM, command_handler=h)


@pytest.mark.parametrize("command,error", [
    (Unregistered(1), "HandlerError"), (Ring(object(), "x"), "UnserializableError"),
    ("a plain string", "HandlerError"), (Armed("an event"), "HandlerError"),
    (Opaque(1), "HandlerError")], ids=["unregistered", "unencodable", "str", "event", "type"])
def test_a_timer_command_that_cannot_run_is_refused_when_scheduled(command, error) -> None:
    """Not registered, not encodable, or not one of the type's commands: a typed NotApplied
    error at the caller who schedules it (not a silent UnknownCommandError when it fires),
    nothing written or indexed, and the aggregate goes on."""
    async def main():
        w = World(_scheduling(command, after=1))
        with pytest.raises(RaysourceError) as err:
            await w.core().handle(Poke("p"))
        assert type(err.value).__name__ == error and isinstance(err.value, NotAppliedError)
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok", timers=(("y", 1),))) == "ok"
        await w.fire_everything()
        assert await w.rings() == Counter({("ok", "y"): 1})
    asyncio.run(main())


def test_an_unregistered_timer_command_of_a_type_without_declared_commands_is_refused() -> None:
    async def main():
        w = World(dataclasses.replace(_scheduling(Unregistered(1), after=1), commands=()))
        with pytest.raises(UnserializableError):
            await w.core().handle(Poke("p"))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok")) == "ok"  # alive
    asyncio.run(main())


@pytest.mark.parametrize("at,fires", [
    (datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc), False),
    (datetime(1, 1, 1, tzinfo=timezone.utc), True),
    (datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=5))), True)],
    ids=["year-9999", "year-1", "utc+5"])
def test_extreme_due_times_are_stored_and_fire_when_due(at, fires) -> None:
    """A due time at the end of the calendar stays pending (and hides no nearer timer); one
    in year 1 (or in another zone, already past) fires at once."""
    async def main():
        w = World(_scheduling(Ring("p", "x"), at=at))
        assert await w.core().handle(Poke("p")) == "p"
        await w.core().handle(Arm("near", timers=(("n", 5),)))
        assert set(await check_agreement(w)) == {"x", "n"}
        w.clock.now += timedelta(seconds=10)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        want = Counter({("near", "n"): 1})
        if fires:
            want[("p", "x")] = 1
        assert await w.rings() == want
        await w.restart()
        assert set(await check_agreement(w)) == (set() if fires else {"x"})
    asyncio.run(main())


# --------------------------------------------------------------------------- 4. the pump


def test_a_stale_fire_does_not_delete_the_row_of_a_reschedule_with_the_same_due_time() -> None:
    """The pump reads a@1's row and sends its fire; before it arrives the aggregate re-arms
    "a" at the same instant (same bucket, due time and name: the same row key, new id a@2).
    The stale fire of a@1 is answered and its row deleted: that must not delete a@2's."""
    async def main():
        w = World()
        at_ms = w.clock.ms() + 5_000
        await w.core().handle(ArmAt("o1", "a", at_ms))
        w.clock.now += timedelta(seconds=10)
        real_send = w.send

        async def send(type_name, pid, fires):  # the re-arm overtakes the fire
            await w.core().handle(ArmAt("o2", "a", at_ms))
            return await real_send(type_name, pid, fires)

        pump = w.pump()
        pump.send = send
        assert await pump.run_once() == 1
        await pump.drain()
        assert await check_agreement(w) == {"a": "a@2"}  # still pending, so it needs its row
        pump.send = real_send
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("o2", "a"): 1})
    asyncio.run(main())


def test_a_timer_whose_fire_always_fails_does_not_stop_its_shard() -> None:
    """One aggregate's fires fail forever (its activation cannot start); its row pins the
    shard's cursor. Timers of other aggregates of that shard due hours later (beyond the
    pump's buckets_per_pass window from the cursor) must still fire."""
    async def main():
        w = World()
        same = [f"x{i}" for i in range(200) if shard_of(f"x{i}", 4) == shard_of("e1", 4)]
        poisoned, healthy = same[0], same[1]
        await w.core(poisoned).handle(Arm("p", timers=(("t", 1),)))
        await w.core(healthy).handle(Arm("h", timers=(("t", 5 * 3600),)))  # in 5 hours
        real_send = w.send

        async def send(type_name, pid, fires):
            if pid.endswith(f"|{poisoned}"):
                raise ConnectionError("its host cannot start")
            return await real_send(type_name, pid, fires)

        pump = w.pump()
        pump.send = send
        for _ in range(6 * 12):  # six hours, a pass every five minutes
            w.clock.now += timedelta(minutes=5)
            await pump.run_once()
            await pump.drain()
            await asyncio.sleep(0.002)
        assert await w.rings(healthy) == Counter({("h", "t"): 1})
        assert await w.rings(poisoned) == Counter()
        pump.send = real_send  # healed: it fires (once) after all
        await pump.run_once()
        await pump.drain()
        assert await w.rings(poisoned) == Counter({("p", "t"): 1})
    asyncio.run(main())


def test_scheduling_without_a_timer_store_is_refused_before_anything_is_written() -> None:
    """An activation built without a timer store used to journal the schedule, fail its
    index write (outcome unknown, stopped) and then fail every later recovery."""
    async def main():
        w = World()
        core = EntityCore(ALARM, "e1", w.journal, w.snaps, w.ser, writer_id="bare",
                          wall_clock=w.clock)
        with pytest.raises(HandlerError, match="timer store"):
            await core.handle(Arm("o", timers=(("a", 1),)))
        assert await core.handle(Poke("p")) == "p"  # alive, and nothing of "o" written
        assert [type(e).__name__ for e in await w.decoded()] == ["Poked"]
        await core.stop()
    asyncio.run(main())


# --------------------------------------------------------------------------- all at once


class FlakyStore(InMemoryTimerStore):
    """An index whose writes fail (before, or after applying: a lost response) at random."""

    def __init__(self, rng, p: float) -> None:
        super().__init__()
        self.rng, self.p, self.on, self.failures = rng, p, True, 0

    async def _maybe(self, write, rows) -> None:
        roll = self.rng.random() if self.on else 1.0
        if roll < self.p / 2:
            self.failures += 1
            raise PersistFailedError("injected: index unavailable")
        await write(rows)
        if roll < self.p:
            self.failures += 1
            raise WriteOutcomeUnknownError("injected: index write response lost")

    async def upsert(self, rows) -> None:
        await self._maybe(super().upsert, rows)

    async def delete(self, rows) -> None:
        await self._maybe(super().delete, rows)


async def expected_rings(w: World, eid: str = "e1") -> Counter:
    """From the journal alone: each scheduled timer rings once unless a cancel or a
    re-schedule removed it while pending."""
    table = TimerTable(w.ser, w.agg.name, w.agg.persistence_id(eid), 0)
    owner: dict[str, tuple[str, str]] = {}
    removed: set[str] = set()
    for stored in await w.events(eid):
        before = {p.timer_id for p in table.pending.values()}
        table.applied(stored)
        after = {p.timer_id for p in table.pending.values()}
        removed |= before - after - {stored.metadata.get("tf")}
        event = w.ser.decode(stored.serializer_id, stored.manifest, stored.payload)
        for tid in after - before:
            owner[tid] = (event.op, tid.rsplit("@", 1)[0])
    return Counter({owner[t]: 1 for t in owner if t not in removed})


@pytest.mark.parametrize("seed", range(24))
def test_random_histories_under_journal_and_index_faults_ring_each_live_timer_once(seed) -> None:
    """Random arms (schedules, cancels, re-schedules), pokes, restarts, pump passes and
    stray fires (stale ids, duplicates), with the journal failing, losing responses,
    duplicating and timing out, and the index failing or losing responses, at random. Then,
    faults off: the table, the journal and the index agree; firing everything rings each
    timer the journal says is live exactly once and nothing else; callers' answers match
    the journal; no row is left."""
    import random

    async def main():
        rng = random.Random(seed)
        faults = [fail(probability=0.08, times=None), lose_response(probability=0.08, times=None),
                  duplicate(probability=0.05, times=None), timeout(probability=0.05, times=None),
                  fail("replay", probability=0.03, times=None)]
        agg = dataclasses.replace(
            rng.choice([ALARM, NO_KEYS]),
            snapshot=rng.choice([SnapshotPolicy(), SnapshotPolicy(every_n_events=3, keep=2)]))
        w = World(agg, faults=faults, store=FlakyStore(rng, 0.1), seed=seed)
        seen: dict[str, str] = {}
        ids: list[str] = []
        pump = w.pump()
        for step in range(30):
            move = rng.random()
            if move < 0.4:
                names = rng.sample("abcd", rng.randint(0, 3))
                cmd = Arm(f"op{step}", timers=tuple((n, rng.choice([0, 30, 90, 400]))
                                                    for n in names),
                          cancel=tuple(rng.sample("abcd", rng.randint(0, 2))))
                seen[cmd.op] = await attempt(w.core().handle(cmd))
                ids += [f"{n}@{w.core().sequence_nr}" for n in names]
            elif move < 0.55:
                await attempt(w.core().handle(Poke(f"p{step}")))
            elif move < 0.65:
                await w.restart()
            elif move < 0.85:
                w.clock.now += timedelta(seconds=rng.choice([5, 60, 200]))
                await pump.run_once()
                await pump.drain()
            elif ids:  # a stray fire: a duplicate, a stale or a guessed id
                tid = rng.choice(ids)
                await attempt(w.core().handle(w.fire_of(TimerFire(tid.rsplit("@", 1)[0], tid))))
        w.journal.faults_enabled, w.store.on = False, False
        await w.restart()
        await check_agreement(w)
        await w.fire_everything()
        await w.restart()
        assert await check_agreement(w) == {}
        assert await w.rings() == await expected_rings(w)
        log = (await w.core().handle(Get())).log
        for op, outcome in seen.items():
            assert outcome != "ok" or f"armed:{op}" in log, f"{op} acknowledged, not stored"
            assert outcome != "not_applied" or f"armed:{op}" not in log, f"{op} stored"
        assert w.store.rows() == []
    asyncio.run(main())


def test_a_persist_whose_timers_exceed_the_payload_limit_is_refused_whole() -> None:
    """20,000 timers in one persist (each command small, together ~2 MB of metadata in one
    event: more than a Cassandra cell should carry): PayloadTooLargeError at the caller,
    nothing written or indexed; a reasonable number still goes through."""
    many = tuple((f"t{i}", 60) for i in range(20_000))

    async def main():
        w = World()
        with pytest.raises(PayloadTooLargeError):
            await w.core().handle(Arm("big", timers=many))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok", timers=many[:500])) == "ok"
        assert len(w.store.rows()) == 500
    asyncio.run(main())


def test_a_pump_cannot_retire_buckets_faster_than_writers_assume() -> None:
    with pytest.raises(ConfigError, match="settle_ms"):
        TimerSettings(settle_ms=1000)
    assert TimerSettings(settle_ms=120_000).settle_ms == 120_000


def test_a_fire_reaching_a_stale_activation_is_not_answered_as_stale() -> None:
    """Split brain during a handoff: activation A recovered at #1; a newer activation B then
    schedules x (x@2, indexed). The pump's fire of x@2 reaches A, which has never seen #2.
    A must not answer "stale" (the pump would delete the row: x pending, never fired); it
    says it is behind (not answered, the row stays) and stops, and the fire then runs on a
    fresh activation, once."""
    async def main():
        w = World()
        await w.core().handle(Arm("o1"))  # A, at #1
        stale = w.core()
        newer = EntityCore(ALARM, "e1", w.journal, w.snaps, w.ser, writer_id="B",
                           wall_clock=w.clock, timer_store=w.store)
        await newer.handle(Arm("o2", timers=(("x", 1),)))  # x@2, indexed
        await newer.stop()
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        await pump.run_once()  # the fire goes to A (w.core() is still A)
        await pump.drain()
        assert stale.stopped and stale.stats.stale_fires == 0
        assert [r.timer_id for r in w.store.rows()] == ["x@2"]
        await asyncio.sleep(0.002)
        await pump.run_once()  # now a fresh activation
        await pump.drain()
        assert await w.rings() == Counter({("o2", "x"): 1}) and w.store.rows() == []
    asyncio.run(main())


# --------------------------------------------------------------------------- the test kit


def test_the_kit_fires_a_recurring_timer_at_each_due_time_within_one_advance(monkeypatch) -> None:
    """advance(60) on a 10 s recurring timer: six fires, each at its due time (the events'
    timestamps 10 s apart), like a timer service would deliver them; a timer re-scheduling
    itself without delay is a ConfigError, not a hang."""
    from raysource.testing import testkit
    from raysource.testing.testkit import AggregateTestKit

    with AggregateTestKit(ALARM) as kit:
        kit.run(Arm("o", timers=(("r", 10),), again=10))
        start = kit.now
        fired = kit.advance(60)
        assert [r.reply for r in fired] == ["rang o/r"] * 6
        assert len(kit.pending_timers) == 1 and kit.now >= start + timedelta(seconds=60)
        stamps = [e.timestamp for e in asyncio.run(_stored(kit))][1:]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
        assert all(9.9 < g < 10.5 for g in gaps), gaps
    monkeypatch.setattr(testkit, "MAX_FIRES_PER_ADVANCE", 50)
    with AggregateTestKit(ALARM) as kit:
        kit.run(Arm("o", timers=(("r", 0),), again=0.0001))
        with pytest.raises(ConfigError, match="more than 50 timer fires"):
            kit.advance(1)


async def _stored(kit) -> list:
    return [e async for e in kit.journal.replay(kit.persistence_id)]


def test_a_fire_of_an_id_the_journal_never_had_is_stale_and_stops_nothing() -> None:
    """The other side of the check above: a row whose id is beyond the journal (a journal
    reset under an old index, a forged fire) is answered stale and deleted; the activation
    is not stopped again and again."""
    async def main():
        w = World()
        core = w.core()
        await core.handle(Arm("o1"))
        assert await core.handle(w.fire_of(TimerFire("x", "x@99"))) is None
        assert not core.stopped and core.stats.stale_fires == 1
        assert await core.handle(Poke("p")) == "p"
    asyncio.run(main())


def test_the_pump_forgets_retry_waits_of_rows_that_went_elsewhere() -> None:
    """Rows whose fire failed and that another pump then fired leave their retry wait
    behind; the table of waits must not grow without bound."""
    async def main():
        w = World()
        pump = w.pump()
        for i in range(12_000):
            pump._retry_at[("alarm", 0, 0, i, "p", "n", f"n@{i}")] = 0.0  # noqa: SLF001
        await pump._fire("alarm", [])  # noqa: SLF001
        assert len(pump._retry_at) == 0  # noqa: SLF001
    asyncio.run(main())


def test_a_second_writer_interleaved_at_the_append_leaves_only_its_own_timers() -> None:
    """Another activation appends (and schedules) between this one's decision and its
    append: this one is fenced (nothing of op2 stored or indexed), the other's timer is
    indexed, and after recovery everything agrees and fires once."""
    async def main():
        w = World()
        await w.core().handle(ARM1)

        async def other():
            rival = EntityCore(ALARM, "e1", w.journal, w.snaps, w.ser, writer_id="rival",
                               wall_clock=w.clock, timer_store=w.store)
            await rival.handle(Arm("rival", timers=(("r", 30),), cancel=("a",)))
            await rival.stop()

        w.journal.add(interleave(other, nth=2))  # before op2's append: the rival's
        assert await attempt(w.core().handle(ARM2)) == "not_applied"
        await w.restart()
        assert await check_agreement(w) == {"b": "b@1", "r": "r@2"}
        await w.fire_everything()
        assert await w.rings() == Counter({("op1", "b"): 1, ("rival", "r"): 1})
        assert w.store.rows() == []
    asyncio.run(main())


@pytest.mark.parametrize("later_event", [False, True], ids=["newest-group", "older-group"])
def test_a_fire_that_writes_nothing_stays_fired_after_a_restart(later_event) -> None:
    """A timer whose command writes nothing (a no-op) fired once. After a restart it came
    back: pending again and re-indexed (its schedule being the newest group), so the command
    ran a second time; or pending with no index row forever (a later event). It must stay
    fired: not pending, no row, not run again."""
    async def main():
        w = World(_scheduling(Ring("p", "x", quiet=True), after=1))
        await w.core().handle(Poke("p"))  # schedules x, whose command is a no-op
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        real_send = w.send

        async def send(type_name, pid, fires):  # the row goes once answered: the snapshot
            out = await real_send(type_name, pid, fires)  # must be there by then
            assert await w.snaps.load(pid) is not None
            return out

        pump.send = send
        await pump.run_once()
        await pump.drain()
        assert w.core().stats.timers_fired == 1 and w.store.rows() == []
        if later_event:
            await w.core().handle(Arm("later"))
        await w.restart()
        core = w.core()
        await core.start()
        assert list(core.timers.pending) == [] and w.store.rows() == []
        await pump.run_once()
        await pump.drain()
        assert core.stats.timers_fired == 0
    asyncio.run(main())


@pytest.mark.parametrize("seed", range(12))
def test_random_fleets_with_two_pumps_and_a_flaky_route_ring_each_live_timer_once(seed) -> None:
    """Five aggregates over four shards, two pumps at once, fires that fail at random (the
    route), clocks jumping up to an hour, writers up to 40 s apart (inside the settle time),
    restarts: at the end every timer the journals say is live rang exactly once."""
    import random

    async def main():
        rng = random.Random(1000 + seed)
        w = World(dataclasses.replace(rng.choice([ALARM, NO_KEYS]), number_of_shards=4))
        eids = [f"f{i}" for i in range(5)]
        real_send = w.send

        async def flaky(type_name, pid, fires):
            if rng.random() < 0.25:
                raise ConnectionError("injected: route down")
            return await real_send(type_name, pid, fires)

        pumps = [w.pump(), w.pump()]
        for p in pumps:
            p.send = flaky
        for step in range(40):
            move, eid = rng.random(), rng.choice(eids)
            if move < 0.45:
                names = rng.sample("abc", rng.randint(1, 2))
                skew = timedelta(seconds=rng.choice([-40, 0, 40]))
                w.clock.now += skew  # this writer's clock
                await w.core(eid).handle(Arm(f"{eid}-{step}", timers=tuple(
                    (n, rng.choice([0, 50, 600, 3000])) for n in names),
                    cancel=tuple(rng.sample("abc", rng.randint(0, 1)))))
                w.clock.now -= skew
            elif move < 0.55:
                await w.restart()
            else:
                w.clock.now += timedelta(seconds=rng.choice([10, 70, 700, 3600]))
                await asyncio.gather(*(p.run_once() for p in pumps))
                await asyncio.gather(*(p.drain() for p in pumps))
                await asyncio.sleep(0.002)
        for p in pumps:
            p.send = real_send
        w.clock.now += timedelta(days=1)
        for _ in range(4):
            await asyncio.gather(*(p.run_once() for p in pumps))
            await asyncio.gather(*(p.drain() for p in pumps))
            await asyncio.sleep(0.002)
        await w.restart()
        for eid in eids:
            assert await check_agreement(w, eid) == {}
            assert await w.rings(eid) == await expected_rings(w, eid), eid
        assert w.store.rows() == []
    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_a_fire_whose_write_times_out_and_lands_late_is_applied_once(agg) -> None:
    """The fire's own write times out (the activation stops) and lands only after the
    pump's retry reached a fresh activation, which runs the timer again and writes the same
    sequence number: one of the two is fenced; Rang is stored once."""
    async def main():
        gate = asyncio.Event()
        w = World(agg, faults=[timeout(nth=2, land=gate)])
        await w.core().handle(Arm("o", timers=(("a", 1),)))
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()  # the fire's write timed out: unknown, the row stays
        assert [r.timer_id for r in w.store.rows()] == ["a@1"]
        await asyncio.sleep(0.002)
        racer = asyncio.ensure_future(pump.run_once())  # the retry, on a fresh activation
        await asyncio.sleep(0)
        gate.set()  # and the first write lands meanwhile
        await racer
        await pump.drain()
        await w.fire_everything()
        await w.restart()
        assert await w.rings() == Counter({("o", "a"): 1})
        assert await check_agreement(w) == {} and w.store.rows() == []
    asyncio.run(main())


# --------------------------------------------------------------------------- the real node


@pytest.mark.cassandra
def test_on_cassandra_a_far_future_first_row_and_a_same_instant_reschedule_lose_nothing(
        cassandra_contact, cassandra_keyspace) -> None:
    """Two of the defects above, on the real journal and timer store (ensure_cursor's
    IF NOT EXISTS, the timer id in the row key): a shard whose first row is a year ahead
    still fires a near timer, and a stale fire answered after a re-schedule at the same
    instant does not delete the new row; each rings once."""
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.timers.cassandra import CassandraTimerStore

    async def main():
        host, port = cassandra_contact
        cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        try:
            w = World(journal=journal, store=CassandraTimerStore(journal.session, cfg))
            w.clock.now = datetime.now(timezone.utc)  # the journal's rows carry real times
            await w.core().handle(Arm("far", timers=(("year", 365 * 86400),)))
            at_ms = w.clock.ms() + 30_000
            await w.core().handle(ArmAt("o1", "a", at_ms))
            w.clock.now += timedelta(seconds=40)
            real_send = w.send

            async def send(type_name, pid, fires):  # a re-arm at the same instant overtakes
                await w.core().handle(ArmAt("o2", "a", at_ms))
                return await real_send(type_name, pid, fires)

            pump = w.pump()
            pump.send = send
            assert await pump.run_once() == 1
            await pump.drain()
            pump.send = real_send
            await pump.run_once()
            await pump.drain()
            assert await w.rings() == Counter({("o2", "a"): 1})
            await w.restart()
            assert await check_agreement_on(w) == {"year": "year@1"}
        finally:
            await journal.close()
    asyncio.run(main())


async def check_agreement_on(w: World) -> dict[str, str]:
    """check_agreement for a store without rows(): the pending timers' rows are read back
    through due() from the cursor (the way the pump finds them)."""
    core = w.core()
    await core.start()
    want = {p.name: p.timer_id for p in (await w.journal_table()).pending.values()}
    assert {p.name: p.timer_id for p in core.timers.pending.values()} == want
    for p in core.timers.pending.values():
        cursor = await w.store.cursor(w.agg.name, core.timers.shard)
        assert cursor is not None and p.bucket >= cursor
        rows = await w.store.due(w.agg.name, core.timers.shard, p.bucket, p.due_ms)
        assert p.timer_id in [r.timer_id for r in rows], f"{p.timer_id} has no row"
    return want
