"""The entity core: one activation of one aggregate, without Ray (its Running phase).

:class:`EntityCore` owns the state of one aggregate (the state after every durable event, its
sequence number, the mailbox) and every transition of it; each step has its collaborator:

* **Recovery** (:meth:`EntityCore.start`; again after a failed write): the phases before
  Running (snapshot, events up to the highest sequence number read first, repairs) are
  :class:`raysource.runtime.recovery.Recovery`. Commands submitted meanwhile wait.
* **Command loop with group commit**: one processing task takes every queued command (up to
  ``max_batch``), decides them one by one against the *tentative* state
  (:class:`raysource.runtime.flush.Decider`), writes all their events with ONE
  ``journal.append`` (:class:`raysource.runtime.append.Appender`) and only then releases the
  replies (rejections and read-only replies of that flush too), runs ``then`` side effects
  and, if due, takes a snapshot. While a write is in flight new commands form the next flush.
* **Failure semantics**: a handler exception or an event that cannot be serialized fails that
  command only (``HandlerError`` / ``SerializationError``, state unchanged); a failed write is
  decided as :mod:`raysource.runtime.append` says (re-read; acknowledged if stored after all;
  else ``PersistFailedError`` or ``WriteOutcomeUnknownError``; a ``ConcurrentWriteError`` or
  ``WriterFencedError`` stops the core for good).
* **Durable timers** and **idempotency keys**: :class:`raysource.runtime.core_timers.TimerSteps`
  (a collaborator behind a Protocol) over the tables of :mod:`raysource.runtime.timers` and
  :mod:`raysource.runtime.idempotency`.

The host (:class:`raysource.runtime.host.AggregateHost`) calls :meth:`EntityCore.handle` — after
restoring per-caller submission order, which Ray's async actors do not keep, in its own buffer so
that it survives passivation — and :meth:`EntityCore.stop` to passivate, using
:attr:`EntityCore.last_activity` to decide when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import ConcurrentWriteError, WriterFencedError
from raysource.journal.serialization import Serialization
from raysource.runtime import tracing
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.append import (
    Appender,
    Snapshotting,
    failed_write_errors,
    fenced_errors,
    is_stored,
)
from raysource.runtime.core_timers import DurableTimers, TimerSteps
from raysource.runtime.errors import (
    AggregateStoppedError,
    CommandRejected,
)
from raysource.runtime.flush import CoreStats, Decider, Flush, SideEffects, handler_error
from raysource.runtime.idempotency import Keyed, KeyTable
from raysource.runtime.metrics import Metrics, error_kind
from raysource.runtime.recovery import Recovery, RecoveryStats
from raysource.runtime.shard_id import shard_of
from raysource.runtime.timers import TimerTable
from raysource.snapshots.api import SnapshotStore
from raysource.timers.api import DEFAULT_BUCKET_MS, TimerStore

__all__ = ["CoreStats", "EntityCore", "RecoveryStats"]  # RecoveryStats: from runtime.recovery

log = logging.getLogger(__name__)

_STOP = object()
_UTC_NOW = partial(datetime.now, UTC)


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
        wall_clock: Callable[[], datetime] = _UTC_NOW,
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
            handler_error=partial(handler_error, self.persistence_id, self.log_context),
        )
        self.decider = Decider(  # runs the handlers of each command (runtime.flush)
            aggregate_type,
            serialization,
            persistence_id=self.persistence_id,
            writer_id=writer_id,
            keys=self.keys,
            timers=self.timers,
            timer_store=timer_store,
            stats=self.stats,
            max_events_per_write=self.max_events_per_write,
            max_bytes_per_write=max_bytes_per_write,
            log_context=self.log_context,
            timer_steps=self.timer_steps,
            resolve=self._resolve,
        )
        self.appender = Appender(  # the write step (runtime.append)
            persistence_id=self.persistence_id,
            type_name=aggregate_type.name,
            stats=self.stats,
            metrics=self.metrics,
            timer_steps=self.timer_steps,
            on_durable=on_durable,
            log_context=self.log_context,
            snapshots=Snapshotting(
                aggregate_type.snapshot.keep, serialization, self.keys, self.timers, wall_clock
            ),
        )
        self._last_activity = clock()
        self._mailbox: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[Any] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._closing = False  # no new commands accepted
        self._busy = False  # a flush is in progress
        self._stop_error: BaseException | None = None  # why the core stopped, if it failed
        self._side_effects = SideEffects(self.persistence_id, self.log_context)
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
        await self._side_effects.wait()

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
        state, seq, rest = self.decider.decide_all(batch, flush, state, seq)
        self._carry.extendleft(reversed(rest))  # did not fit: the next flush's, first
        self.stats.flushes += 1
        old_seq = self._seq
        if flush.events and not await self._write(flush):
            if flush.trace is not None:
                flush.trace.finish()
            return
        self._state, self._seq = state, seq
        # fires answered without a write: this activation is current (True) or not (stop)
        fires_ok = not flush.unwritten_fires or await self.timer_steps.confirm_unwritten_fires(
            flush, self.journal, self._seq
        )
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
        if flush.trace is not None:  # answered: the commands' spans end (not after a snapshot)
            flush.trace.finish()
        for fn, new_state in flush.side_effects if flush.events or not ahead else ():
            self._side_effects.run(fn, new_state)
        policy = self.aggregate_type.snapshot
        if not forgot and flush.events and (flush.snapshot_due or policy.crossed(old_seq, seq)):
            await self._save_snapshot()
        if ahead:  # like a fenced write: the next activation recovers the truth
            self._fail_stop(AggregateStoppedError(f"{self.persistence_id}: behind the journal"))
            self._mailbox.put_nowait(_STOP)

    async def _write(self, flush: Flush) -> bool:
        """Append the flush's events as one group (``raysource.runtime.append``); True once
        durable (or stored after all). On failure the flush's callers are answered here and
        False is returned (or ``_Fenced`` raised: the loop ends)."""
        exc = await self.appender.write(self.journal, flush)
        if exc is None:
            return True
        events, n = flush.events, len(flush.outcomes)
        if isinstance(exc, (WriterFencedError, ConcurrentWriteError)):
            self._fail_stop(exc)
            fenced = isinstance(exc, WriterFencedError)
            errors = fenced_errors(self.persistence_id, events, n, exc) if fenced else None
            for i, o in enumerate(flush.outcomes):
                self._resolve(o.future, None, errors[i] if errors else self._stopped_error())
            if fenced:
                await self._end_activation()
            raise _Fenced from exc
        rebuilt = await self._rebuild_after_failure()
        if rebuilt and await is_stored(
            self.journal, self.persistence_id, events, self._seq, self.log_context
        ):
            log.warning(
                "%s: the failed write was stored after all; acknowledging it",
                self.persistence_id,
                extra=self.log_context(events[-1].sequence_nr),
            )
            return True
        errors, stop = failed_write_errors(self.persistence_id, events, n, exc, rebuilt)
        if stop:
            self._fail_stop(exc)
            self._mailbox.put_nowait(_STOP)
        for o, err in zip(flush.outcomes, errors):
            self._resolve(o.future, None, err)
        return False

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

    async def _save_snapshot(self) -> None:
        await self.appender.save_snapshot(self.snapshot_store, self._state, self._seq)

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


class _Fenced(Exception):
    """Internal: the flush was fenced; the loop must end."""
