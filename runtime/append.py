"""The write steps of the running entity core (:class:`raysource.runtime.core.EntityCore`): a
flush's append and what a failed one means for its callers, and the snapshots.

:meth:`Appender.write` appends the flush's events as ONE group (with their spans when tracing
is on), then announces them (``on_durable``) and writes their timers' index rows; it answers
None once all that is done, else the exception that ended it (counted and logged here). The
core then decides, with the functions below:

* ``WriterFencedError`` (the journal ended this activation's epoch: a newer one claimed, or a
  write was not confirmed): every caller gets ``WriteOutcomeUnknownError``
  (:func:`fenced_errors`) and the core stops without a re-read (the newer activation may
  have recovered the write; nothing this one appends can be acknowledged any more);
* ``ConcurrentWriteError`` (another activation writes this persistence id): the flush and
  everything queued fail with ``AggregateStoppedError`` and the core stops for good;
* anything else: the core rebuilds its state from the journal first (so a caller that sees a
  failure finds the state equal to the journal's); if the events are stored after all
  (:func:`is_stored`) the flush is acknowledged; else :func:`failed_write_errors`:
  ``PersistFailedError`` if the journal says nothing was written (:func:`not_applied`; the
  activation goes on if the re-read worked), else ``WriteOutcomeUnknownError`` and the
  activation stops (the write may still land; saying "failed" would invite a retry that runs
  the command twice, so the next activation recovers whatever the journal ends up holding).
  A failed timer-index write after a stored append is such an unknown outcome (the events ARE
  stored: never "not applied").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from raysource.journal.api import Journal, StoredEvent, StoredSnapshot
from raysource.journal.errors import (
    ConcurrentWriteError,
    JournalError,
    JournalOutcomeUnknownError,
    NotAppliedError,
    OutcomeUnknownError,
    SerializationError,
    WriterFencedError,
)
from raysource.journal.serialization import Serialization
from raysource.runtime import tracing
from raysource.runtime.core_timers import TimerSteps
from raysource.runtime.errors import PersistFailedError, WriteOutcomeUnknownError
from raysource.runtime.flush import CoreStats, Flush
from raysource.runtime.idempotency import KeyTable
from raysource.runtime.metrics import Metrics, error_kind
from raysource.runtime.timers import TimerTable
from raysource.snapshots.api import SnapshotStore

__all__ = [
    "Appender",
    "Snapshotting",
    "failed_write_errors",
    "fenced_errors",
    "is_stored",
    "not_applied",
]

log = logging.getLogger("raysource.runtime.core")  # the activation's records, one logger


@dataclass(frozen=True, slots=True)
class Snapshotting:
    """What a snapshot is made of: the policy's ``keep``, the encoder, the activation's key and
    timer tables (saved with the state), the clock of its timestamp."""

    keep: int
    serialization: Serialization
    keys: KeyTable
    timers: TimerTable
    wall_clock: Callable[[], datetime]


class Appender:
    """The write steps of one activation: the flush's events (see the module docstring) and
    the snapshots."""

    def __init__(
        self,
        *,
        persistence_id: str,
        type_name: str,
        stats: CoreStats,
        metrics: Metrics,
        timer_steps: TimerSteps,
        on_durable: Callable[[list[StoredEvent]], None] | None,
        log_context: Callable[[int | None], dict[str, Any]],
        snapshots: Snapshotting,
    ) -> None:
        self.snapshots = snapshots
        self.persistence_id = persistence_id
        self.type_name = type_name
        self.stats = stats
        self.metrics = metrics
        self.timer_steps = timer_steps
        self.on_durable = on_durable
        self.log_context = log_context

    async def write(self, journal: Journal, flush: Flush) -> Exception | None:
        """Append ``flush.events`` to ``journal``, announce and index them; None once done."""
        events = flush.events
        self.stats.writes += 1
        started = time.perf_counter()
        try:
            if flush.trace is None:
                await journal.append(events)
            else:
                await _traced_append(journal, flush, flush.trace)
                events = flush.events
        except Exception as exc:
            self._failed(exc, events[0].sequence_nr, len(events))
            return exc
        if self.on_durable is not None:
            try:
                self.on_durable(events)
            except Exception:  # the listener is best effort; the append is acknowledged
                log.exception("%s: on_durable listener failed", self.persistence_id)
        self.stats.events += len(events)
        self.metrics.journal_write(self.type_name, len(events), time.perf_counter() - started)
        try:
            await self.timer_steps.index(events)
        except Exception as exc:  # stored, but not indexed: a recovery re-indexes (as tags)
            self.metrics.journal_error(self.type_name, "timer-index")
            last = events[-1].sequence_nr
            log.warning(
                "%s: timer index write after #%d failed: %r",
                self.persistence_id,
                last,
                exc,
                extra=self.log_context(last),
            )
            unknown = JournalOutcomeUnknownError(
                f"{self.persistence_id}: events stored, their timer index write failed: {exc!r}"
            )
            unknown.__cause__ = exc
            return unknown
        return None

    async def save_snapshot(self, store: SnapshotStore, state: Any, sequence_nr: int) -> None:
        """Save ``state`` at ``sequence_nr`` with the key and timer tables, then keep only the
        policy's newest. A snapshot is an optimisation: a failure is counted and logged,
        never a command's."""
        snap = self.snapshots
        try:
            ser_id, manifest, payload = snap.keys.wrap_snapshot(
                *snap.serialization.encode(
                    state, persistence_id=self.persistence_id, sequence_nr=sequence_nr
                ),
                timers=snap.timers.to_lists(),
            )
            await store.save(
                StoredSnapshot(
                    persistence_id=self.persistence_id,
                    sequence_nr=sequence_nr,
                    payload=payload,
                    manifest=manifest,
                    serializer_id=ser_id,
                    timestamp=snap.wall_clock(),
                )
            )
            self.stats.snapshots += 1
            await store.keep_newest(self.persistence_id, snap.keep)
        except Exception as exc:
            self.stats.snapshot_failures += 1
            self.metrics.journal_error(self.type_name, "snapshot")
            log.warning(
                "%s: snapshot at %d failed: %r",
                self.persistence_id,
                sequence_nr,
                exc,
                extra=self.log_context(None),
            )

    def _failed(self, exc: Exception, first: int, n: int) -> None:
        self.stats.failed_writes += 1
        fenced = isinstance(exc, (WriterFencedError, ConcurrentWriteError))
        self.metrics.journal_error(self.type_name, "fenced" if fenced else error_kind(exc))
        if isinstance(exc, WriterFencedError):
            what = "%s: the journal ended this activation's epoch, stopping: %s"
        elif isinstance(exc, ConcurrentWriteError):
            what = "%s: fenced by another writer, stopping: %s"
        else:
            log.warning(
                "%s: write of %d events from #%d failed: %r",
                self.persistence_id,
                n,
                first,
                exc,
                extra=self.log_context(first),
            )
            return
        log.warning(what, self.persistence_id, exc, extra=self.log_context(first))


async def _traced_append(journal: Journal, flush: Flush, trace: tracing.FlushTrace) -> None:
    """The append with its spans; each traced command's events carry its span's context."""
    flush.events = trace.before_append(flush.events, tracing.guard_of(journal))
    try:
        await journal.append(flush.events)
    except BaseException as exc:
        trace.after_append(exc)
        raise
    trace.after_append(None)


def fenced_errors(
    persistence_id: str, events: list[StoredEvent], n: int, exc: Exception
) -> list[Exception]:
    """The ``n`` callers' errors when the journal ended this activation's epoch."""
    first, last = events[0].sequence_nr, events[-1].sequence_nr
    return [
        _caused(
            WriteOutcomeUnknownError(
                f"{persistence_id}: the write of #{first}..#{last} was not confirmed "
                f"(this activation was fenced or lost its write; it stopped): {exc}"
            ),
            exc,
        )
        for _ in range(n)
    ]


def failed_write_errors(
    persistence_id: str, events: list[StoredEvent], n: int, exc: Exception, rebuilt: bool
) -> tuple[list[Exception], bool]:
    """The ``n`` callers' errors after a failed write that is not stored (``rebuilt``: the
    re-read worked), and whether the activation must stop for them (only when ``rebuilt``: a
    failed re-read stopped it already)."""
    if not_applied(exc):
        detail = "" if rebuilt else " (the activation stopped: the journal could not be re-read)"
        msg = f"{persistence_id}: write failed{detail}: {exc!r}"
        return [_caused(PersistFailedError(msg), exc) for _ in range(n)], False
    first, last = events[0].sequence_nr, events[-1].sequence_nr
    detail = "" if rebuilt else "; the journal could not be re-read"
    msg = f"{persistence_id}: the write of #{first}..#{last} was not confirmed{detail}: {exc}"
    return [_caused(WriteOutcomeUnknownError(msg), exc) for _ in range(n)], rebuilt


def _caused(err: Exception, cause: BaseException) -> Exception:
    err.__cause__ = cause
    return err


async def is_stored(
    journal: Journal,
    persistence_id: str,
    events: list[StoredEvent],
    sequence_nr: int,
    log_context: Callable[[int | None], dict[str, Any]],
) -> bool:
    """True if ``journal`` holds exactly these events (written by this activation);
    ``sequence_nr``: the activation's after its re-read."""
    first, last = events[0].sequence_nr, events[-1].sequence_nr
    if sequence_nr < last:
        return False
    try:
        stored = [e async for e in journal.replay(persistence_id, first, last)]
    except Exception as exc:
        log.warning(
            "%s: cannot check the failed write: %r", persistence_id, exc, extra=log_context(first)
        )
        return False
    return len(stored) == len(events) and all(
        (a.writer_id, a.manifest, bytes(a.payload)) == (b.writer_id, b.manifest, b.payload)
        for a, b in zip(stored, events)
    )


def not_applied(exc: BaseException) -> bool:
    """True if a failed append provably wrote nothing: a raysource ``NotAppliedError``, or a
    journal/serialization error that does not say "outcome unknown" (the journal contract:
    ``append`` raises ``JournalOutcomeUnknownError`` whenever the write may have happened).
    Anything else (a bug, a foreign exception) is taken as unknown."""
    if isinstance(exc, OutcomeUnknownError):
        return False
    return isinstance(exc, (NotAppliedError, JournalError, SerializationError))
