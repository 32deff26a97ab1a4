"""A test kit that runs one aggregate in-process, on the in-memory journal and snapshot store.

It drives the real :class:`~raysource.runtime.core.EntityCore` (same recovery, command loop, group
commit and snapshots as in production), without Ray. By default every command, reply, event and
snapshot (the state after every command) round-trips through the real serializer, so a type
that would fail in production fails in the unit test.

Example (a runnable test; the README reuses it)::

    from raysource.testing.testkit import AggregateTestKit
    from raysource.examples.seats import SHOW, ReserveSeat, SeatReserved

    def test_a_seat_cannot_be_double_booked():
        kit = AggregateTestKit(SHOW)
        first = kit.run(ReserveSeat("A1", "alice"))
        assert first.events == (SeatReserved("A1", "alice"),)
        assert first.state.holder("A1") == "alice"
        second = kit.run(ReserveSeat("A1", "bob"))
        assert second.rejected == "seat A1 is already reserved"
        assert second.events == ()
        kit.restart()  # recovers from the journal; asserts the same state comes back
        kit.close()

``run``/``given``/``restart`` are synchronous (the kit owns an event loop); inside ``async``
tests use ``arun``/``agiven``/``arestart`` instead (do not mix the two styles in one kit).

Durable timers: the kit's wall clock is real time plus an offset that ``advance(seconds)``
moves forward; ``advance`` fires every timer due by the new time, earliest first, each with the
clock at its due time (so a timer its fire schedules is due by then too: a 10 s recurring timer
fires six times in ``advance(60)``), through the same path as a timer service (the core runs a
timer's command only while it is pending), and returns one :class:`RunResult` per fire (more
than ``MAX_FIRES_PER_ADVANCE`` in one call: ``ConfigError``, a timer re-scheduling itself
without delay). ``pending_timers`` lists what is scheduled::

    from raysource.examples.seats import HoldSeat, ConfirmHold

    def test_an_unconfirmed_hold_is_released():
        kit = AggregateTestKit(SHOW)
        kit.run(HoldSeat("A1", "alice", seconds=600))
        assert [t["name"] for t in kit.pending_timers] == ["hold-A1"]
        assert kit.advance(599) == []  # not due yet
        [fired] = kit.advance(1)
        assert fired.state.holds == {} and kit.pending_timers == []
        kit.close()
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import CommandRejected
from raysource.runtime.recovery import RecoveryStats
from raysource.runtime.timers import TimerFire
from raysource.snapshots.api import SnapshotStore
from raysource.timers.memory import InMemoryTimerStore

__all__ = ["MAX_FIRES_PER_ADVANCE", "AggregateTestKit", "RunResult"]

MAX_FIRES_PER_ADVANCE = 10_000

S = TypeVar("S")
T = TypeVar("T")
_writer_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RunResult(Generic[S]):
    """The outcome of one command: the events it persisted (decoded from the journal), the
    state afterwards, and either its ``reply`` or its ``error`` (the exception the caller
    would get)."""

    events: tuple[Any, ...]
    state: S
    reply: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def rejected(self) -> str | None:
        """The rejection reason if the command was rejected, else None."""
        return self.error.reason if isinstance(self.error, CommandRejected) else None

    def unwrap(self) -> Any:
        """The reply, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.reply


class AggregateTestKit(Generic[S]):
    """Runs ``aggregate_type`` for one ``entity_id`` on an in-memory journal (or the given
    ``journal``/``snapshot_store``). ``serialization`` defaults to a fresh
    :class:`Serialization` with the aggregate's types registered; ``roundtrip=False`` turns the
    serializer round-trip checks of commands, replies and states off (events and snapshots
    always go through the serializer, as in production)."""

    def __init__(
        self,
        aggregate_type: AggregateType,
        *,
        entity_id: str = "test-1",
        serialization: Serialization | None = None,
        roundtrip: bool = True,
        journal: Journal | None = None,
        snapshot_store: SnapshotStore | None = None,
    ) -> None:
        if journal is None or snapshot_store is None:
            from raysource.journal.memory import InMemoryJournal
            from raysource.snapshots.memory import InMemorySnapshotStore

            journal = journal if journal is not None else InMemoryJournal()
            snapshot_store = (
                snapshot_store if snapshot_store is not None else InMemorySnapshotStore()
            )
        self.aggregate_type = aggregate_type
        self.entity_id = entity_id
        self.persistence_id = aggregate_type.persistence_id(entity_id)
        self.serialization = serialization if serialization is not None else Serialization()
        aggregate_type.register_types(self.serialization)
        self.roundtrip = roundtrip
        self.journal = journal
        self.snapshot_store = snapshot_store
        self.timer_store = InMemoryTimerStore()
        self._offset = timedelta()  # advance() moves the kit's wall clock ahead of real time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: EntityCore | None = None

    # ------------------------------------------------------------------ sync API

    def run(self, command: Any) -> RunResult[S]:
        """Send ``command``; return events, state and reply or error."""
        return self._sync(self.arun(command))

    def given(self, *events: Any) -> AggregateTestKit[S]:
        """Seed the journal with ``events`` (appended after the existing history) and recover."""
        return self._sync(self.agiven(*events))

    def restart(self) -> RecoveryStats:
        """Stop the current activation, recover a new one from the journal (and snapshots) and
        assert that it has the same state and sequence number."""
        return self._sync(self.arestart())

    def advance(self, seconds: float) -> list[RunResult[S]]:
        """Move the kit's clock ``seconds`` ahead and fire the timers due by then."""
        return self._sync(self.aadvance(seconds))

    def close(self) -> None:
        """Stop the activation and close the kit's event loop."""
        if self._loop is not None:
            self._loop.run_until_complete(self.aclose())
            self._loop.close()
            self._loop = None

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def __enter__(self) -> AggregateTestKit[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async API

    @property
    def core(self) -> EntityCore:
        """The current activation (created on first use)."""
        if self._core is None:
            self._core = self._new_core()
        return self._core

    @property
    def state(self) -> S:
        return self.core.state

    @property
    def now(self) -> datetime:
        """The kit's wall clock (real time plus what :meth:`advance` added)."""
        return datetime.now(UTC) + self._offset

    @property
    def pending_timers(self) -> list[dict[str, Any]]:
        """The pending durable timers: ``name``, ``timer_id``, ``due_ms``, earliest first."""
        return self.core.timers.info()

    async def aadvance(self, seconds: float) -> list[RunResult[S]]:
        target = self.now + timedelta(seconds=seconds)
        target_ms = int(target.timestamp() * 1000)
        core = self.core
        await core.start()
        results: list[RunResult[S]] = []
        while True:
            due = [r for r in self.timer_store.rows() if r.due_ms <= target_ms]
            if not due:
                break
            if len(results) >= MAX_FIRES_PER_ADVANCE:
                raise ConfigError(
                    f"more than {MAX_FIRES_PER_ADVANCE} timer fires in one "
                    f"advance({seconds}): a timer re-schedules itself without "
                    f"delay?"
                )
            row = min(due, key=lambda r: (r.due_ms, r.name))
            at = datetime.fromtimestamp(row.due_ms / 1000, UTC)
            if at > self.now:  # the fire happens at its due time (never backwards)
                self._offset += at - self.now
            before = core.sequence_nr
            reply: Any = None
            error: BaseException | None = None
            try:
                reply = await core.handle(
                    TimerFire(row.name, row.timer_id, row.traceparent, row.tracestate)
                )
            except Exception as exc:
                error = exc
            await self.timer_store.delete([row])
            results.append(
                RunResult(
                    await self._events(before + 1, core.sequence_nr), core.state, reply, error
                )
            )
        if target > self.now:
            self._offset += target - self.now
        return results

    async def arun(self, command: Any) -> RunResult[S]:
        core = self.core
        await core.start()
        if self.roundtrip:
            command = self._check_roundtrip(command, "command")
        before = core.sequence_nr
        reply: Any = None
        error: BaseException | None = None
        try:
            reply = await core.handle(command)
        except Exception as exc:
            error = exc
        if error is None and self.roundtrip:
            reply = self._check_roundtrip(reply, "reply")
        events = await self._events(before + 1, core.sequence_nr)
        if self.roundtrip and core.sequence_nr > before:
            self._check_roundtrip(core.state, "state (snapshot)")
        return RunResult(events, core.state, reply, error)

    async def agiven(self, *events: Any) -> AggregateTestKit[S]:
        await self._stop_core()
        highest = await self.journal.highest_sequence_nr(self.persistence_id)
        stored = []
        now = datetime.now(UTC)
        for i, event in enumerate(events, start=highest + 1):
            ser_id, manifest, payload = self.serialization.encode(
                event, persistence_id=self.persistence_id, sequence_nr=i
            )
            stored.append(
                StoredEvent(
                    self.persistence_id,
                    i,
                    payload,
                    manifest,
                    ser_id,
                    now,
                    writer_id="testkit",
                    tags=self.aggregate_type.tags_for(event),
                )
            )
        if stored:
            await self.journal.append(stored)
        await self.core.start()
        return self

    async def arestart(self) -> RecoveryStats:
        old = self.core
        await old.start()
        await old.stop()
        self._core = self._new_core()
        stats = await self._core.start()
        assert self._core.sequence_nr == old.sequence_nr, (
            f"recovered sequence number {self._core.sequence_nr} != {old.sequence_nr}"
        )
        assert self._core.state == old.state, (
            f"recovered state differs from the state before restart:\n"
            f"  before:    {old.state!r}\n  recovered: {self._core.state!r}"
        )
        return stats

    async def aclose(self) -> None:
        await self._stop_core()

    async def events(self) -> tuple[Any, ...]:
        """Every event of this aggregate in the journal, decoded."""
        return await self._events(1, None)

    # ------------------------------------------------------------------ internals

    def _new_core(self) -> EntityCore:
        return EntityCore(
            self.aggregate_type,
            self.entity_id,
            self.journal,
            self.snapshot_store,
            self.serialization,
            writer_id=f"testkit-{next(_writer_ids)}",
            wall_clock=lambda: self.now,
            timer_store=self.timer_store,
        )

    async def _stop_core(self) -> None:
        if self._core is not None:
            await self._core.stop()
            self._core = None

    async def _events(self, first: int, last: int | None) -> tuple[Any, ...]:
        if last is not None and last < first:
            return ()
        return tuple(
            [
                self.serialization.decode(
                    e.serializer_id,
                    e.manifest,
                    e.payload,
                    persistence_id=e.persistence_id,
                    sequence_nr=e.sequence_nr,
                )
                async for e in self.journal.replay(self.persistence_id, first, last)
            ]
        )

    def _check_roundtrip(self, obj: Any, what: str) -> Any:
        """The copy of ``obj`` after a serializer round trip, under the serializer's own rule
        (``UnserializableError``, as in production, for a ``what`` that would not read back
        equal: wrong field types, NaN, a tuple in a list field, ...)."""
        return self.serialization.roundtrip(obj)
