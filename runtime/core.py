"""The entity core: one activation of one aggregate, without Ray.

Size: ~850 lines on purpose — one activation's state machine (mailbox, flush and group commit,
write-failure decisions, recovery, the idempotency table, durable timers) is one class, so every
transition of that state reads in one place; the pure helpers live apart
(``raysource.runtime.idempotency``, ``raysource.runtime.timers``); the timer steps are a
collaborator behind an interface (``raysource.runtime.core_timers.TimerSteps``).

:class:`EntityCore` owns the state of one aggregate and everything that happens to it:

* **Recovery** (:meth:`EntityCore.start`): the phases before Running (snapshot, then events up
  to the highest sequence number read first, then the repairs) are
  :class:`raysource.runtime.recovery.Recovery`; this class is the Running phase. Commands
  submitted meanwhile wait in the mailbox.
* **Command loop with group commit**: one processing task takes every queued command (up to
  ``max_batch``), runs them one by one against the *tentative* state, writes all their events
  with ONE ``journal.append`` and only then releases the replies (rejections and read-only
  replies of that flush too), runs ``then`` side effects and, if due, takes a snapshot. While a
  write is in flight new commands queue up and form the next flush.
* **Failure semantics**: a handler exception fails that command only (``HandlerError``, state
  unchanged); an event that cannot be serialized fails that command only (its
  ``SerializationError``); after a failed write the state is rebuilt from the journal and the
  flush is acknowledged if its events are stored after all; else every command of the flush
  fails with ``PersistFailedError`` if the journal says nothing was written, or with
  ``WriteOutcomeUnknownError`` (and the core stops) if the write may still land or the
  journal could not be re-read; a ``ConcurrentWriteError``
  (another activation writes this persistence id) fails the flush and everything queued with
  ``AggregateStoppedError`` and stops the core for good.

The host (:class:`raysource.runtime.host.AggregateHost`) calls :meth:`EntityCore.handle` — after
restoring per-caller submission order, which Ray's async actors do not keep, in its own buffer so
that it survives passivation — and :meth:`EntityCore.stop` to passivate, using
:attr:`EntityCore.last_activity` to decide when.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from raysource.journal.api import Journal, StoredEvent, StoredSnapshot
from raysource.journal.errors import (
    ConcurrentWriteError,
    ConfigError,
    JournalError,
    JournalOutcomeUnknownError,
    NotAppliedError,
    OutcomeUnknownError,
    SerializationError,
    WriterFencedError,
)
from raysource.journal.serialization import Serialization
from raysource.runtime import tracing
from raysource.runtime.aggregate import AggregateType, NoOp, Persist, Reject, Reply
from raysource.runtime.core_timers import DurableTimers, TimerSteps
from raysource.runtime.errors import (
    AggregateStoppedError,
    CommandError,
    CommandRejected,
    HandlerError,
    PersistFailedError,
    WriteOutcomeUnknownError,
)
from raysource.runtime.flush import CoreStats, Flush, Outcome
from raysource.runtime.idempotency import Keyed, KeyTable
from raysource.runtime.metrics import Metrics, error_kind
from raysource.runtime.recovery import Recovery, RecoveryStats
from raysource.runtime.shard_id import shard_of
from raysource.runtime.timers import (
    FIRED_FIELD,
    TIMER_KEY_PREFIX,
    TimerFire,
    TimerTable,
)
from raysource.snapshots.api import SnapshotStore
from raysource.timers.api import DEFAULT_BUCKET_MS, TimerStore

__all__ = ["CoreStats", "EntityCore", "RecoveryStats"]  # RecoveryStats: from runtime.recovery

log = logging.getLogger(__name__)

_STOP = object()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EntityCore:
    """One activation of the aggregate ``(aggregate_type, entity_id)``.

    ``writer_id`` names this activation in the journal (diagnostics of fencing conflicts).
    A flush takes at most ``max_batch`` commands; a command whose events would push one write
    over ``max_events_per_write`` events or ``max_bytes_per_write`` payload bytes goes into the
    next write instead (one command's events are never split: an oversized single command
    fails on its own). Keep ``max_events_per_write`` at or below the journal's group limit
    (the Cassandra partition size).
    ``clock`` (monotonic seconds) drives :attr:`last_activity`; ``wall_clock`` the event
    timestamps. ``metrics`` records commands by outcome, one
    latency per journal write, recoveries and store errors (default: a private in-memory
    :class:`~raysource.runtime.metrics.Metrics`; a host passes its own). ``on_durable(events)``
    (optional) is called synchronously after each acknowledged append, before the replies are
    released; it must not block (an exception is logged and ignored).

    Use from one asyncio event loop. :meth:`start` is optional (the first command starts it).
    """

    def __init__(
        self,
        aggregate_type: AggregateType[Any, Any, Any],
        entity_id: str,
        journal: Journal,
        snapshot_store: SnapshotStore,
        serialization: Serialization,
        *,
        writer_id: str,
        max_batch: int = 256,
        max_events_per_write: int = 1000,
        max_bytes_per_write: int = 4_000_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utcnow,
        metrics: Metrics | None = None,
        timer_store: TimerStore | None = None,
        on_durable: Callable[[list[StoredEvent]], None] | None = None,
    ) -> None:
        if min(max_batch, max_events_per_write, max_bytes_per_write) < 1:
            raise ValueError("max_batch, max_events_per_write and max_bytes_per_write must be >= 1")
        self.aggregate_type = aggregate_type
        self.entity_id = entity_id
        self.persistence_id = aggregate_type.persistence_id(entity_id)
        self.journal = journal
        self.snapshot_store = snapshot_store
        self.serialization = serialization
        self.writer_id = writer_id
        self.max_batch = max_batch
        # never build a flush the journal must refuse (e.g. Cassandra's partition size)
        limit = journal.max_group_size
        self.max_events_per_write = min(max_events_per_write, limit or max_events_per_write)
        self.max_bytes_per_write = max_bytes_per_write
        self.on_durable = on_durable
        self._carry: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._clock = clock
        self._wall_clock = wall_clock
        self.stats = CoreStats()
        self.metrics = metrics if metrics is not None else Metrics()
        self.recovery: RecoveryStats | None = None
        self._state: Any = aggregate_type.initial_state
        self._seq = 0
        # applied idempotency keys (runtime.idempotency): rebuilt by every recovery
        self.keys = KeyTable(
            aggregate_type.idempotency, serialization, self.persistence_id, wall_clock
        )
        # pending durable timers (runtime.timers) and their index: rebuilt by every recovery
        self.timer_store = timer_store
        self.timers = TimerTable(
            serialization,
            aggregate_type.name,
            self.persistence_id,
            shard_of(entity_id, aggregate_type.number_of_shards),
            timer_store.bucket_ms if timer_store is not None else DEFAULT_BUCKET_MS,
        )
        self.timer_steps: TimerSteps = DurableTimers(  # a collaborator (runtime.core_timers)
            self.timers,
            timer_store,
            persistence_id=self.persistence_id,
            writer_id=writer_id,
            stats=self.stats,
            wall_clock=wall_clock,
            log_context=self.log_context,
            handler_error=self._handler_error,
        )
        self._last_activity = clock()
        self._mailbox: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[Any] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._closing = False  # no new commands accepted
        self._busy = False  # a flush is in progress
        self._stop_error: BaseException | None = None  # why the core stopped, if it failed
        self._background: set[asyncio.Task[Any]] = set()
        # the newest replayed atomic group's bound (no group exceeds the journal's limit)
        self._group_limit = journal.max_group_size or max_events_per_write

    # ------------------------------------------------------------------ read-only views

    @property
    def state(self) -> Any:
        """The state after every durable event (never includes unacknowledged events)."""
        return self._state

    @property
    def sequence_nr(self) -> int:
        """The sequence number of the last durable event (0 for a new aggregate)."""
        return self._seq

    @property
    def last_activity(self) -> float:
        """``clock()`` at the last submitted or completed command (for passivation)."""
        return self._last_activity

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called or the core failed (fenced, recovery failed)."""
        return self._closing

    @property
    def queued(self) -> int:
        """Commands waiting in the mailbox (not counting the flush in progress)."""
        return self._mailbox.qsize() + len(self._carry)

    @property
    def idle(self) -> bool:
        """True when nothing is queued or being processed: the moment a host may passivate
        (then call :meth:`stop`, which still drains commands that slip in before it)."""
        return not (self._busy or self._carry or not self._mailbox.empty())

    def log_context(self, sequence_nr: int | None = None) -> dict[str, Any]:
        """The ``extra`` of this core's log records (see ``raysource.runtime.logs``);
        ``sequence_nr`` defaults to the last durable one."""
        return {
            "persistence_id": self.persistence_id,
            "sequence_nr": self._seq if sequence_nr is None else sequence_nr,
            "writer_id": self.writer_id,
            "type": self.aggregate_type.name,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> RecoveryStats:
        """Recover (once) and start the command loop; returns the recovery stats.

        Raises the recovery error (a ``JournalError`` or ``SerializationError``) if recovery
        failed; the core is then stopped and queued commands got ``AggregateStoppedError``.
        """
        self._ensure_started()
        assert self._ready is not None
        await asyncio.shield(self._ready)
        assert self.recovery is not None
        return self.recovery

    async def stop(self) -> None:
        """Stop accepting commands, finish the queued ones, then end the loop. Idempotent."""
        if not self._closing:
            self._closing = True
            self._mailbox.put_nowait(_STOP)
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _ensure_started(self) -> None:
        if self._task is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name=f"entity-core:{self.persistence_id}")

    # ------------------------------------------------------------------ commands

    async def handle(self, command: Any) -> Any:
        """Process ``command`` and return its reply once every event it depends on is durable.

        Raises ``CommandRejected``, ``UnknownCommandError``, ``HandlerError``,
        ``SerializationError`` (an event could not be encoded), ``PersistFailedError`` (not
        stored, never will be), ``WriteOutcomeUnknownError`` (unconfirmed: may be stored, or
        land later; the activation stopped), or ``AggregateStoppedError`` (stopped before or
        while processing; not applied, retry on a fresh activation). Cancelling the await
        before the command was processed skips it.
        """
        return await self._submit(command)

    def _submit(self, command: Any) -> asyncio.Future[Any]:
        """Enqueue ``command``; the returned future resolves with the reply or the error."""
        if self._closing:
            raise self._stopped_error()
        self._ensure_started()
        fut = asyncio.get_running_loop().create_future()
        if tracing.ENABLED and type(command) is Keyed and command.trace is not None:
            command.trace.received_ns = time.time_ns()  # the queue wait's start
        self._mailbox.put_nowait((command, fut))
        self._last_activity = self._clock()
        return fut

    def _stopped_error(self) -> AggregateStoppedError:
        err = AggregateStoppedError(f"{self.persistence_id}: this activation has stopped")
        err.__cause__ = self._stop_error
        return err

    # ------------------------------------------------------------------ loop

    async def _run(self) -> None:
        assert self._ready is not None
        try:
            # the journal's claim of this activation comes BEFORE the history is read
            await self.journal.begin_activation(self.persistence_id, self.writer_id)
            self.recovery = await self._recover()
        except BaseException as exc:  # recovery failed: nothing can be processed
            log.error("%s: recovery failed: %r", self.persistence_id, exc, extra=self.log_context())
            if isinstance(exc, Exception):
                self.metrics.journal_error(self.aggregate_type.name, error_kind(exc))
            self._ready.set_exception(exc)
            self._ready.exception()  # mark retrieved: start() may never be awaited
            self._fail_stop(exc)
            await self._end_activation()  # release the claim: this process reads on
            return
        self._ready.set_result(None)
        while True:
            batch = await self._next_batch()
            if batch is None:
                break
            self._busy = True
            try:
                await self._flush(batch)
            except _Fenced:
                return
            except Exception as exc:  # a bug in the core: never leave callers hanging
                log.exception(
                    "%s: command loop failed, stopping",
                    self.persistence_id,
                    extra=self.log_context(),
                )
                self._fail_stop(exc)
                for _, fut in batch:
                    self._resolve(fut, None, self._stopped_error())
                return
            finally:
                self._busy = False
            self._last_activity = self._clock()
        await self._end_activation()

    async def _end_activation(self) -> None:
        try:
            await self.journal.end_activation(self.persistence_id, self.writer_id)
        except Exception as exc:  # releases local state only: never fails a stop
            log.warning(
                "%s: end of activation failed: %r",
                self.persistence_id,
                exc,
                extra=self.log_context(),
            )

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future[Any]]] | None:
        """Commands deferred from the last flush first, then everything queued (bounded);
        None once the stop marker is reached."""
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        while self._carry and len(batch) < self.max_batch:
            batch.append(self._carry.popleft())
        if not batch:
            item = await self._mailbox.get()
            if item is _STOP:
                return None
            batch.append(item)
        while len(batch) < self.max_batch and not self._mailbox.empty():
            item = self._mailbox.get_nowait()
            if item is _STOP:
                self._mailbox.put_nowait(_STOP)  # handle the stop after this batch
                break
            batch.append(item)
        return batch

    def _fail_stop(self, cause: BaseException) -> None:
        """Stop for good: fail every queued command with AggregateStoppedError."""
        self._closing = True
        self._stop_error = cause
        while self._carry:
            self._resolve(self._carry.popleft()[1], None, self._stopped_error())
        while not self._mailbox.empty():
            item = self._mailbox.get_nowait()
            if item is not _STOP:
                self._resolve(item[1], None, self._stopped_error())

    # ------------------------------------------------------------------ one flush

    async def _flush(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        flush = Flush(self._wall_clock())
        if tracing.ENABLED:
            flush.trace = tracing.FlushTrace(self.persistence_id, self.aggregate_type.name)
        state, seq = self._state, self._seq
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
                self._resolve(
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
                fired_by = self.timers.trace_of(fire, flush.timers) if fire else ""
                traced = flush.trace.begin(carrier, command, fired_by)
            decided = self._decide(command, state, seq, outcome, flush, key, fire)
            if traced is not None:
                traced.decided(before, len(flush.events), outcome.error)
            if decided is None:  # this write is full: the rest goes into the next one
                self._carry.extendleft(reversed(batch[i:]))
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

        self.stats.flushes += 1
        old_seq = self._seq
        if flush.events and not await self._write(flush):
            if flush.trace is not None:
                flush.trace.finish()
            return
        self._state, self._seq = state, seq
        # fires answered without a write: this activation is current (True) or not (stop)
        fires_ok = await self.timer_steps.confirm_unwritten_fires(flush, self.journal, self._seq)
        forgot = False  # a fire that wrote nothing: only a snapshot can record it
        for fire in flush.silent_fires if fires_ok else ():
            forgot = self.timers.fired_without_events(fire) or forgot
        for key, (o, first) in flush.keyed.items():
            if first is not None:  # the reply is kept encoded only (decoded on a repeat)
                self.keys.applied(first)
            elif isinstance(o.error, CommandRejected):
                self.keys.rejected(key, o.error)
        ahead = not fires_ok
        if forgot:  # before the answer: the service deletes the row once answered
            await self._save_snapshot()
        for o in flush.outcomes:
            self._resolve(o.future, o.value, o.error)
        for fn, new_state in flush.side_effects if flush.events or not ahead else ():
            self._run_side_effect(fn, new_state)
        policy = self.aggregate_type.snapshot
        if not forgot and flush.events and (flush.snapshot_due or policy.crossed(old_seq, seq)):
            await self._save_snapshot()
        if flush.trace is not None:
            flush.trace.finish()
        if ahead:  # like a fenced write: the next activation recovers the truth
            self._fail_stop(AggregateStoppedError(f"{self.persistence_id}: behind the journal"))
            self._mailbox.put_nowait(_STOP)

    async def _write(self, flush: Flush) -> bool:
        """Append the flush's events as one group; True once durable. On failure the flush's
        callers are answered here and False is returned."""
        self.stats.writes += 1
        type_name = self.aggregate_type.name
        started = time.perf_counter()
        try:
            if flush.trace is None:
                await self.journal.append(flush.events)
            else:
                await self._traced_append(flush, flush.trace)
        except WriterFencedError as exc:
            # The epoch ended (a newer activation claimed, or a write was not confirmed): the
            # flush's outcome is unknown (the newer activation may have recovered it) and
            # nothing this activation appends can be acknowledged any more: stop, no re-read.
            log.warning(
                "%s: the journal ended this activation's epoch, stopping: %s",
                self.persistence_id,
                exc,
                extra=self.log_context(flush.events[0].sequence_nr),
            )
            self.stats.failed_writes += 1
            self.metrics.journal_error(type_name, "fenced")
            first, last = flush.events[0].sequence_nr, flush.events[-1].sequence_nr
            self._fail_stop(exc)
            for o in flush.outcomes:
                err = WriteOutcomeUnknownError(
                    f"{self.persistence_id}: the write of #{first}..#{last} was not confirmed "
                    f"(this activation was fenced or lost its write; it stopped): {exc}"
                )
                err.__cause__ = exc
                self._resolve(o.future, None, err)
            await self._end_activation()
            raise _Fenced from exc
        except ConcurrentWriteError as exc:
            log.warning(
                "%s: fenced by another writer, stopping: %s",
                self.persistence_id,
                exc,
                extra=self.log_context(flush.events[0].sequence_nr),
            )
            self.stats.failed_writes += 1
            self.metrics.journal_error(type_name, "fenced")
            self._fail_stop(exc)
            for o in flush.outcomes:
                self._resolve(o.future, None, self._stopped_error())
            raise _Fenced from exc
        except Exception as exc:
            self.stats.failed_writes += 1
            self.metrics.journal_error(type_name, error_kind(exc))
            log.warning(
                "%s: write of %d events from #%d failed: %r",
                self.persistence_id,
                len(flush.events),
                flush.events[0].sequence_nr,
                exc,
                extra=self.log_context(flush.events[0].sequence_nr),
            )
            return await self._after_failed_write(flush, exc)
        if self.on_durable is not None:
            self._notify_durable(flush.events)
        self.stats.events += len(flush.events)
        self.metrics.journal_write(type_name, len(flush.events), time.perf_counter() - started)
        try:
            await self.timer_steps.index(flush.events)
        except Exception as exc:  # stored, but not indexed: a recovery re-indexes (as tags)
            self.metrics.journal_error(type_name, "timer-index")
            log.warning(
                "%s: timer index write after #%d failed: %r",
                self.persistence_id,
                flush.events[-1].sequence_nr,
                exc,
                extra=self.log_context(flush.events[-1].sequence_nr),
            )
            # the events ARE stored: never "not applied" (a re-read decides, as for tags)
            unknown = JournalOutcomeUnknownError(
                f"{self.persistence_id}: events stored, their timer index write failed: {exc!r}"
            )
            unknown.__cause__ = exc
            return await self._after_failed_write(flush, unknown)
        return True

    def _notify_durable(self, events: list[StoredEvent]) -> None:
        assert self.on_durable is not None
        try:
            self.on_durable(events)
        except Exception:  # the listener is best effort; the append is acknowledged
            log.exception("%s: on_durable listener failed", self.persistence_id)

    async def _traced_append(self, flush: Flush, trace: tracing.FlushTrace) -> None:
        """The append with its spans; each traced command's events carry its span's context."""
        flush.events = trace.before_append(flush.events, tracing.guard_of(self.journal))
        try:
            await self.journal.append(flush.events)
        except BaseException as exc:
            trace.after_append(exc)
            raise
        trace.after_append(None)

    async def _after_failed_write(self, flush: Flush, exc: Exception) -> bool:
        """Answer the callers of a flush whose append raised ``exc``: re-read the truth first,
        so a caller that sees a failure finds the state equal to the journal's, and a write
        that did land is acknowledged. Returns True if it landed (acknowledge the flush).

        * stored after all: True (the callers get their replies);
        * the journal says nothing was written (:func:`_not_applied`): ``PersistFailedError``
          (the activation goes on if the re-read worked, else it stops);
        * else (unconfirmed, or the re-read failed after an unknown outcome):
          ``WriteOutcomeUnknownError`` and the activation stops. The write may still land;
          saying "failed" would invite a retry that runs the command twice, so the next
          activation recovers whatever the journal ends up holding.
        """
        first, last = flush.events[0].sequence_nr, flush.events[-1].sequence_nr
        rebuilt = await self._rebuild_after_failure()
        if rebuilt and await self._is_stored(flush.events):
            log.warning(
                "%s: the failed write was stored after all; acknowledging it",
                self.persistence_id,
                extra=self.log_context(last),
            )
            return True
        if _not_applied(exc):
            detail = (
                "" if rebuilt else " (the activation stopped: the journal could not be re-read)"
            )
            errors: list[Exception] = [
                PersistFailedError(f"{self.persistence_id}: write failed{detail}: {exc!r}")
                for _ in flush.outcomes
            ]
        else:
            detail = "" if rebuilt else "; the journal could not be re-read"
            errors = [
                WriteOutcomeUnknownError(
                    f"{self.persistence_id}: the write of #{first}..#{last} was not confirmed"
                    f"{detail}: {exc}"
                )
                for _ in flush.outcomes
            ]
            if rebuilt:
                self._fail_stop(exc)
                self._mailbox.put_nowait(_STOP)
        for o, err in zip(flush.outcomes, errors):
            err.__cause__ = exc
            self._resolve(o.future, None, err)
        return False

    async def _is_stored(self, events: list[StoredEvent]) -> bool:
        """True if the journal holds exactly these events (written by this activation)."""
        first, last = events[0].sequence_nr, events[-1].sequence_nr
        if self._seq < last:
            return False
        try:
            stored = [e async for e in self.journal.replay(self.persistence_id, first, last)]
        except Exception as exc:
            log.warning(
                "%s: cannot check the failed write: %r",
                self.persistence_id,
                exc,
                extra=self.log_context(first),
            )
            return False
        return len(stored) == len(events) and all(
            (a.writer_id, a.manifest, bytes(a.payload)) == (b.writer_id, b.manifest, b.payload)
            for a, b in zip(stored, events)
        )

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
            self._resolve(fut, value, error)
        return found

    def _decide(
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
            outcome.error = self._handler_error("command handler", command, exc)
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
            outcome.error = self._handler_error("event handler or reply", command, exc)
            return state, seq
        if flush.events and self._over_limit(flush, stored):
            return None
        flush.events.extend(stored)
        if stored and stored[0].metadata:
            self.timers.tentative(stored[0], flush.timers)
        flush.bytes += sum(_size(e) for e in stored)
        flush.side_effects.extend((fn, new_state) for fn in effect.then)
        flush.snapshot_due = flush.snapshot_due or snap
        return new_state, new_seq

    def _over_limit(self, flush: Flush, more: list[StoredEvent]) -> bool:
        if len(flush.events) + len(more) > self.max_events_per_write:
            return True
        return flush.bytes + sum(_size(e) for e in more) > self.max_bytes_per_write

    def _handler_error(self, where: str, command: Any, exc: Exception) -> HandlerError:
        log.warning(
            "%s: %s raised on %s: %r",
            self.persistence_id,
            where,
            type(command).__qualname__,
            exc,
            extra=self.log_context(),
        )
        err = HandlerError(
            f"{self.persistence_id}: {where} raised on {type(command).__qualname__}: {exc!r}"
        )
        err.__cause__ = exc
        return err

    def _resolve(self, fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is None:
            outcome = "accepted"
            fut.set_result(value)
        else:
            outcome = "rejected" if isinstance(error, CommandRejected) else "error"
            self.stats.failed_commands += 1
            fut.set_exception(error)
        self.metrics.command(self.aggregate_type.name, outcome)

    def _run_side_effect(self, fn: Callable[[Any], Any], new_state: Any) -> None:
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
            task.add_done_callback(self._side_effect_done)

    def _side_effect_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: side effect failed: %r",
                self.persistence_id,
                task.exception(),
                extra=self.log_context(),
            )

    async def _rebuild_after_failure(self) -> bool:
        """Rebuild the state from the journal; on failure stop the core and return False."""
        try:
            self.recovery = await self._recover()
            return True
        except Exception as exc:
            log.error(
                "%s: rebuild after a failed write failed, stopping: %r",
                self.persistence_id,
                exc,
                extra=self.log_context(),
            )
            self.metrics.journal_error(self.aggregate_type.name, error_kind(exc))
            self._fail_stop(exc)
            self._mailbox.put_nowait(_STOP)
            return False

    # ------------------------------------------------------------------ snapshots

    async def _save_snapshot(self) -> None:
        policy = self.aggregate_type.snapshot
        try:
            ser_id, manifest, payload = self.keys.wrap_snapshot(
                *self.serialization.encode(
                    self._state, persistence_id=self.persistence_id, sequence_nr=self._seq
                ),
                timers=self.timers.to_lists(),
            )
            await self.snapshot_store.save(
                StoredSnapshot(
                    persistence_id=self.persistence_id,
                    sequence_nr=self._seq,
                    payload=payload,
                    manifest=manifest,
                    serializer_id=ser_id,
                    timestamp=self._wall_clock(),
                )
            )
            self.stats.snapshots += 1
            await self.snapshot_store.keep_newest(self.persistence_id, policy.keep)
        except Exception as exc:  # a snapshot is an optimisation: never fail commands for it
            self.stats.snapshot_failures += 1
            self.metrics.journal_error(self.aggregate_type.name, "snapshot")
            log.warning(
                "%s: snapshot at %d failed: %r",
                self.persistence_id,
                self._seq,
                exc,
                extra=self.log_context(),
            )

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> RecoveryStats:
        """Run the recovery phases (``raysource.runtime.recovery``); Running starts here."""
        self.stats.recoveries += 1
        done = await Recovery(
            self.aggregate_type,
            self.persistence_id,
            self.journal,
            self.snapshot_store,
            self.serialization,
            keys=self.keys,
            timers=self.timers,
            repair_timer_index=self.timer_steps.repair_index,
            metrics=self.metrics,
            log_context=self.log_context,
            group_limit=self._group_limit,
        ).run()
        self._state, self._seq = done.state, done.sequence_nr
        return done.stats


def _size(event: StoredEvent) -> int:
    """What an event weighs in a write: its payload and its metadata (timers, keys)."""
    return len(event.payload) + sum(len(v) for v in event.metadata.values())


def _not_applied(exc: BaseException) -> bool:
    """True if a failed append provably wrote nothing: a raysource ``NotAppliedError``, or a
    journal/serialization error that does not say "outcome unknown" (the journal contract:
    ``append`` raises ``JournalOutcomeUnknownError`` whenever the write may have happened).
    Anything else (a bug, a foreign exception) is taken as unknown."""
    if isinstance(exc, OutcomeUnknownError):
        return False
    return isinstance(exc, (NotAppliedError, JournalError, SerializationError))


class _Fenced(Exception):
    """Internal: the flush was fenced; the loop must end."""
