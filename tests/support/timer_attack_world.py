"""The world of the durable-timer attack tests (tests/faults/test_timers_attack*.py): an "alarm"
aggregate that makes every application of a timer's command visible (a fired ``Ring(op,
name)`` persists ``Rang(op, name)``: the same value stored twice is a command applied twice),
a journal with the fault kit, stores and activations on a fake clock, fires sent like a timer
service's, and the invariant :func:`check_agreement`: after recovery the live table equals the
table folded from the journal, and every pending timer has an index row the pump can reach
(in a bucket at or after its shard's cursor).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from raysource.errors import (
    CommandRejected,
    NotAppliedError,
    OutcomeUnknownError,
    PersistFailedError,
    WriteOutcomeUnknownError,
)
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.aggregate import (
    AggregateType,
    IdempotencyPolicy,
    none,
    persist,
    reject,
    reply,
    schedule,
    unknown_command,
)
from raysource.runtime.core import EntityCore
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.runtime.timers import TimerFire, TimerTable, fire_key
from raysource.sharding.timer_pump import TimerPump, TimerSettings
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.faults import FaultyJournal
from raysource.timers.memory import InMemoryTimerStore

T0 = datetime(2026, 12, 1, 8, 0, 30, tzinfo=UTC)


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
            return persist(
                Armed(op),
                reply=op,
                cancel=cancel,
                schedule=[schedule(n, Ring(op, n, again=again), after=a) for n, a in timers],
            )
        case ArmAt(op=op, name=name, at_ms=at_ms):
            at = datetime.fromtimestamp(at_ms / 1000, UTC)
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
    name="alarm",
    initial_state=AlarmState(),
    command_handler=handle,
    event_handler=apply,
    events=(Armed, Rang, Poked),
    commands=(Arm, ArmAt, Ring, Poke, Get),
    types=(AlarmState, Opaque),
    number_of_shards=4,
)

NO_KEYS = dataclasses.replace(ALARM, idempotency=IdempotencyPolicy(enabled=False))


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

    def __init__(
        self, agg: AggregateType = ALARM, faults=(), store=None, seed=None, journal=None
    ) -> None:
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
            self.cores[eid] = EntityCore(
                self.agg,
                eid,
                self.journal,
                self.snaps,
                serialization_for(self.agg, StoreSpec()),
                writer_id=f"w{self.activations}",
                wall_clock=self.clock,
                timer_store=self.store,
            )
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
        return list(
            await asyncio.gather(
                *(core.handle(self.fire_of(f)) for f in fires), return_exceptions=True
            )
        )

    def pump(self, **settings) -> TimerPump:
        shards = [(self.agg.name, s) for s in range(self.agg.number_of_shards)]

        async def owned():
            return shards

        return TimerPump(
            self.store,
            self.send,
            owned,
            TimerSettings(**{"retry_after_s": 0.001, **settings}),
            wall_ms=self.clock.ms,
        )

    async def events(self, eid: str = "e1") -> list:
        self.journal.faults_enabled = False
        try:
            return [e async for e in self.journal.replay(self.agg.persistence_id(eid))]
        finally:
            self.journal.faults_enabled = True

    async def decoded(self, eid: str = "e1") -> list:
        return [
            self.ser.decode(e.serializer_id, e.manifest, e.payload) for e in await self.events(eid)
        ]

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
    for _name, tid in want.items():
        rows = [r for r in w.store.rows() if r.persistence_id == pid and r.timer_id == tid]
        assert rows, f"pending timer {tid} has no index row"
        cursor = await w.store.cursor(w.agg.name, rows[0].shard)
        assert cursor is not None and any(r.bucket >= cursor for r in rows), (
            f"{tid}: its rows {rows} lie behind the cursor {cursor}: the pump never reads them"
        )
    return want


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


def _scheduling(command=None, **kw):
    """ALARM whose Poke schedules ``command`` under "x" (``kw``: after= or at=)."""

    def h(state, c):
        if isinstance(c, Poke):
            return persist(Poked(c.op), reply=c.op, schedule=schedule("x", command, **kw))
        return handle(state, c)

    return dataclasses.replace(ALARM, command_handler=h)


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


ARM1 = Arm("op1", timers=(("a", 60), ("b", 60)))

ARM2 = Arm("op2", timers=(("c", 60), ("a", 120)), cancel=("b",))  # replace a, cancel b
