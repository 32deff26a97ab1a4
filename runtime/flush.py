"""One flush of the running entity core (:class:`raysource.runtime.core.EntityCore`): what it
records while its commands are decided (:class:`Flush`, one :class:`Outcome` per command) and
the core's counters (:class:`CoreStats`)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from raysource.journal.api import StoredEvent
from raysource.journal.errors import ConfigError, SerializationError
from raysource.journal.serialization import Serialization
from raysource.runtime import tracing
from raysource.runtime.aggregate import AggregateType, NoOp, Persist, Reject, Reply
from raysource.runtime.errors import CommandError, CommandRejected, HandlerError
from raysource.runtime.idempotency import Keyed, KeyTable
from raysource.runtime.timers import FIRED_FIELD, TIMER_KEY_PREFIX, Pending, TimerFire, TimerTable
from raysource.timers.api import TimerStore

if TYPE_CHECKING:  # the timer steps type the flush too
    from raysource.runtime.core_timers import TimerSteps

__all__ = [
    "CoreStats",
    "Decider",
    "Flush",
    "Outcome",
    "SideEffects",
    "event_size",
    "handler_error",
]

log = logging.getLogger("raysource.runtime.core")  # the activation's records, one logger


@dataclass(slots=True)
class CoreStats:
    """Counters of one activation (mutable, read them any time)."""

    commands: int = 0
    flushes: int = 0
    writes: int = 0
    events: int = 0
    rejections: int = 0
    failed_commands: int = 0
    failed_writes: int = 0
    snapshots: int = 0
    snapshot_failures: int = 0
    recoveries: int = 0
    repeats: int = 0  # commands answered from the idempotency key table (nothing run)
    timers_fired: int = 0  # timer fires that ran their command
    stale_fires: int = 0  # fires of timers no longer pending (cancelled, replaced, fired)


@dataclass(slots=True)
class Outcome:
    """The pending result of one command within a flush."""

    future: asyncio.Future[Any]
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Flush:
    """The commands of one flush and everything they decided, until the append is answered."""

    timestamp: datetime  # one timestamp for every event of the flush: one identifiable group
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    side_effects: list[tuple[Callable[[Any], Any], Any]] = field(default_factory=list)
    snapshot_due: bool = False
    bytes: int = 0
    # idempotency key -> (the first command's outcome, its first event if it persisted)
    keyed: dict[str, tuple[Outcome, StoredEvent | None]] = field(default_factory=dict)
    # durable timers: the flush's tentative changes, and fires that wrote no event
    timers: dict[str, Pending | None] = field(default_factory=dict)
    silent_fires: list[TimerFire] = field(default_factory=list)
    # fires of ids beyond this activation's sequence number (it may have missed events)
    behind: list[Outcome] = field(default_factory=list)
    # fires answered from this activation's own view, with no write of theirs (stale,
    # undecodable, beyond it, or consumed without events): a fence check comes first
    unwritten_fires: list[Outcome] = field(default_factory=list)
    stale_fires: int = 0
    trace: tracing.FlushTrace | None = None  # its spans, when tracing is on


class Decider:
    """Decides one command at a time against the flush's tentative state (the handlers run
    here): records its outcome, its events (encoded, with the idempotency key's and timers'
    metadata on the first) and its side effects in the :class:`Flush`. The running core
    (:class:`raysource.runtime.core.EntityCore`) owns the state; this holds only what the
    decision reads: the type, the encoder, the activation's key and timer tables, the write
    limits."""

    def __init__(
        self,
        aggregate_type: AggregateType[Any, Any, Any],
        serialization: Serialization,
        *,
        persistence_id: str,
        writer_id: str,
        keys: KeyTable,
        timers: TimerTable,
        timer_store: TimerStore | None,
        stats: CoreStats,
        max_events_per_write: int,
        max_bytes_per_write: int,
        log_context: Callable[[], dict[str, Any]],
        timer_steps: TimerSteps,
        resolve: Callable[[asyncio.Future[Any], Any, BaseException | None], None],
    ) -> None:
        self.timer_steps = timer_steps
        self.resolve = resolve  # answers a caller now (a repeated key, a refused command)
        self.aggregate_type = aggregate_type
        self.serialization = serialization
        self.persistence_id = persistence_id
        self.writer_id = writer_id
        self.keys = keys
        self.timers = timers
        self.timer_store = timer_store
        self.stats = stats
        self.max_events_per_write = max_events_per_write
        self.max_bytes_per_write = max_bytes_per_write
        self.log_context = log_context

    def decide_all(
        self, batch: list[tuple[Any, asyncio.Future[Any]]], flush: Flush, state: Any, seq: int
    ) -> tuple[Any, int, list[tuple[Any, asyncio.Future[Any]]]]:
        """Decide the commands of ``batch`` in order into ``flush``, from the durable ``state``
        and ``seq``: returns the tentative state and sequence number after them and the
        commands that did not fit into this write (the next flush's, first). Commands whose
        caller gave up are skipped; a repeated idempotency key is answered as the first time
        (nothing run); a timer fire runs the command it carries (or is answered here)."""
        rest: list[tuple[Any, asyncio.Future[Any]]] = []
        for i, (command, fut) in enumerate(batch):
            if fut.done():  # the caller gave up before we started: skip it
                continue
            key = carrier = None
            if flush.trace is not None and type(command) is Keyed:
                carrier = command.trace
            if isinstance(command, Keyed):
                command, key = command.command, (command.key if self.keys.enabled else None)
            if (
                key is not None
                and key.startswith(TIMER_KEY_PREFIX)
                and not isinstance(command, TimerFire)
            ):  # would shadow a timer's fire
                self.resolve(
                    fut,
                    None,
                    ConfigError(
                        f"idempotency keys starting with {TIMER_KEY_PREFIX!r} are reserved for "
                        f"durable timers, got {key!r}"
                    ),
                )
                continue
            if key is not None and self._repeated(key, fut, flush):
                continue  # answered like the first application of its key, nothing written
            outcome = Outcome(fut)
            fire = command if isinstance(command, TimerFire) else None
            if fire is not None:
                command = self.timer_steps.command_of(fire, outcome, flush, seq)
                if command is None:  # stale (or undecodable): answered, nothing run
                    flush.outcomes.append(outcome)
                    continue
            before = len(flush.events)
            traced = None
            if flush.trace is not None:
                fired_by = self.timers.trace_of(fire, flush.timers) if fire else None
                traced = flush.trace.begin(carrier, command, fired_by)
            decided = self.decide(command, state, seq, outcome, flush, key, fire)
            if traced is not None:
                traced.decided(before, len(flush.events), outcome.error)
            if decided is None:  # this write is full: the rest goes into the next one
                rest = batch[i:]
                break
            state, seq = decided
            if fire is not None:
                self.stats.timers_fired += 1
                if len(flush.events) == before:  # consumed, but nothing journals it
                    flush.timers[fire.name] = None
                    flush.silent_fires.append(fire)
                    flush.unwritten_fires.append(outcome)
            self.stats.commands += 1
            flush.outcomes.append(outcome)
            if key is not None:
                first = flush.events[before] if len(flush.events) > before else None
                flush.keyed[key] = (outcome, first)
        return state, seq, rest

    def _repeated(self, key: str, fut: asyncio.Future[Any], flush: Flush) -> bool:
        """If ``key`` was applied (or rejected) already, in this flush or before, answer
        ``fut`` as the first time (in this flush: with that command's outcome) and return
        True; the command is not run again."""
        earlier = flush.keyed.get(key)
        if earlier is not None:
            first = earlier[0]
            flush.outcomes.append(Outcome(fut, first.value, first.error))
            self.stats.repeats += 1
            return True
        try:
            found, value, error = self.keys.answer(key)
        except Exception as exc:  # the stored reply cannot be decoded any more
            found, value, error = True, None, exc
        if found:  # applied by an earlier, durable write: answer now, whatever this write does
            self.stats.repeats += 1
            self.resolve(fut, value, error)
        return found

    def decide(
        self,
        command: Any,
        state: Any,
        seq: int,
        outcome: Outcome,
        flush: Flush,
        key: str | None = None,
        fire: TimerFire | None = None,
    ) -> tuple[Any, int] | None:
        """Run one command against the tentative ``state``; record its outcome and events.
        Returns the tentative state and sequence number after it, or None if its events do
        not fit into this write any more (the command must be re-run in the next flush)."""
        agg = self.aggregate_type
        try:
            effect = agg.command_handler(state, command)
        except CommandError as exc:
            outcome.error = exc
            return state, seq
        except Exception as exc:
            outcome.error = self.handler_error("command handler", command, exc)
            return state, seq
        if isinstance(effect, Reply):
            outcome.value = effect.value
        elif isinstance(effect, Reject):
            self.stats.rejections += 1
            outcome.error = CommandRejected(effect.reason)
        elif isinstance(effect, NoOp):
            pass
        elif isinstance(effect, Persist):
            return self._apply_persist(command, effect, state, seq, outcome, flush, key, fire)
        else:
            outcome.error = HandlerError(
                f"{self.persistence_id}: command handler returned {effect!r} for "
                f"{type(command).__qualname__}, not an Effect"
            )
        return state, seq

    def _apply_persist(
        self,
        command: Any,
        effect: Persist,
        state: Any,
        seq: int,
        outcome: Outcome,
        flush: Flush,
        key: str | None = None,
        fire: TimerFire | None = None,
    ) -> tuple[Any, int] | None:
        agg = self.aggregate_type
        predicate = agg.snapshot.predicate
        stored: list[StoredEvent] = []
        new_state, new_seq, snap = state, seq, False
        timestamp = flush.timestamp
        try:
            for event in effect.events:
                new_seq += 1
                ser_id, manifest, payload = self.serialization.encode(
                    event, persistence_id=self.persistence_id, sequence_nr=new_seq
                )
                new_state = agg.event_handler(new_state, event)
                if predicate is not None and predicate(new_state, event):
                    snap = True
                stored.append(
                    StoredEvent(
                        persistence_id=self.persistence_id,
                        sequence_nr=new_seq,
                        payload=payload,
                        manifest=manifest,
                        serializer_id=ser_id,
                        timestamp=timestamp,
                        writer_id=self.writer_id,
                        tags=agg.tags_for(event),
                    )
                )
            outcome.value = effect.reply_for(new_state)
            meta: dict[str, str] = {}
            if key is not None and stored:  # the key and reply, in the same atomic append
                meta.update(self.keys.metadata(key, outcome.value, seq + 1))
            if fire is not None and stored:  # the fire, journaled with what it caused
                meta[FIRED_FIELD] = fire.timer_id
            if effect.schedule or effect.cancel:  # the timers, with the events creating them
                if not stored:
                    raise ConfigError("a schedule or cancel needs at least one event")
                if self.timer_store is None:  # else stored, never indexed, and unrecoverable
                    raise ConfigError(
                        f"{self.persistence_id}: durable timers need a timer "
                        f"store (EntityCore(timer_store=...))"
                    )
                for s in effect.schedule:  # else it would be refused only when it fires
                    if agg.commands and not isinstance(s.command, agg.commands):
                        raise ConfigError(
                            f"timer {s.name!r}: {type(s.command).__qualname__} is not a "
                            f"command of {agg.name!r} (its commands=)"
                        )
                meta.update(
                    self.timers.metadata(effect.schedule, effect.cancel, timestamp, seq + 1)
                )
            if meta:
                stored[0] = dataclasses.replace(stored[0], metadata={**stored[0].metadata, **meta})
        except (SerializationError, CommandError) as exc:
            outcome.error = exc
            return state, seq
        except Exception as exc:
            outcome.error = self.handler_error("event handler or reply", command, exc)
            return state, seq
        if flush.events and self._over_limit(flush, stored):
            return None
        flush.events.extend(stored)
        if stored and stored[0].metadata:
            self.timers.tentative(stored[0], flush.timers)
        flush.bytes += sum(event_size(e) for e in stored)
        flush.side_effects.extend((fn, new_state) for fn in effect.then)
        flush.snapshot_due = flush.snapshot_due or snap
        return new_state, new_seq

    def _over_limit(self, flush: Flush, more: list[StoredEvent]) -> bool:
        if len(flush.events) + len(more) > self.max_events_per_write:
            return True
        return flush.bytes + sum(event_size(e) for e in more) > self.max_bytes_per_write

    def handler_error(self, where: str, command: Any, exc: Exception) -> HandlerError:
        return handler_error(self.persistence_id, self.log_context, where, command, exc)


def handler_error(
    persistence_id: str,
    log_context: Callable[[], dict[str, Any]],
    where: str,
    command: Any,
    exc: Exception,
) -> HandlerError:
    """The (logged) ``HandlerError`` of a handler that raised ``exc`` on ``command``."""
    log.warning(
        "%s: %s raised on %s: %r",
        persistence_id,
        where,
        type(command).__qualname__,
        exc,
        extra=log_context(),
    )
    err = HandlerError(f"{persistence_id}: {where} raised on {type(command).__qualname__}: {exc!r}")
    err.__cause__ = exc
    return err


def event_size(event: StoredEvent) -> int:
    """What an event weighs in a write: its payload and its metadata (timers, keys)."""
    return len(event.payload) + sum(len(v) for v in event.metadata.values())


class SideEffects:
    """Runs a flush's ``then`` side effects once its replies are released: a failure is
    logged, never a command's; awaitable ones run in the background (:meth:`wait` at stop)."""

    def __init__(self, persistence_id: str, log_context: Callable[[], dict[str, Any]]) -> None:
        self.persistence_id = persistence_id
        self.log_context = log_context
        self._background: set[asyncio.Task[Any]] = set()

    def run(self, fn: Callable[[Any], Any], new_state: Any) -> None:
        try:
            result = fn(new_state)
        except Exception:
            log.exception(
                "%s: side effect %r failed", self.persistence_id, fn, extra=self.log_context()
            )
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._background.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: side effect failed: %r",
                self.persistence_id,
                task.exception(),
                extra=self.log_context(),
            )

    async def wait(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
