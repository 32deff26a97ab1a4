"""The timer store SPI: the durable index of pending timers, read by the timer services.

Where timers live. A timer is part of its aggregate's journaled history: the ``persist`` that
schedules (or cancels) it stores the schedule in its first event's metadata, in the same
atomic append as the events (see :mod:`raysource.runtime.timers`). The journal is the truth;
the timer store is an **index** of the pending timers, derived from the journal like the tag
rows, so a timer service can find due timers without replaying aggregates:

* after an append is durable, the writing activation inserts a :class:`TimerRow` per new
  schedule and deletes the rows of the timers it cancelled or replaced, *before* it
  acknowledges the command (an acknowledged schedule is always indexed);
* if the writer dies (or the index write fails) between the append and the rows, the next
  recovery of the aggregate re-writes the rows of its newest atomic group (every older group
  was indexed before the next append, exactly like ``Journal.repair_tags``);
* a timer service deletes a row once its fire was answered (fired, rejected, or stale).

Layout. Rows are partitioned by ``(aggregate type, shard, bucket)``, where ``bucket`` is
``max(due, now) // bucket_ms`` (``now``: the writer's wall clock when it writes the row), so
no partition is hot: 10,000 timers due in the same minute spread over every shard of the type.
Per ``(type, shard)`` a **cursor** records the oldest bucket that may still hold rows; a
writer makes sure it exists before its first row of that shard
(:meth:`TimerStore.ensure_cursor` at ``cursor_floor(now)``: never after a bucket any writer
may still write to, whatever the due times of the rows) and only timer services move it
forward, past a bucket that is empty and older than ``settle_ms`` (see
:class:`TimerStore.advance`). Because rows go to a bucket at or after the writer's "now", a
bucket whose end lies ``settle_ms`` in the past can receive no new rows as long as clocks
agree within, and row writes finish within, ``settle_ms`` (default 60 s; a writer that
finds, after its row write, that the row's bucket ended ``settle_ms / 2`` ago — a stalled
append, a slow write — re-writes the row into the current bucket; a timer service moves a
row whose fire keeps failing out of a settled bucket the same way).

Contract (checked by :mod:`raysource.testing.timer_contract` for every implementation):
``upsert`` is idempotent (same primary key: ``(type_name, shard, bucket, due_ms,
persistence_id, name, timer_id)``: the id is part of it, so a re-schedule under the same name
at the same instant is a row of its own, and deleting the answered row of a stale fire never
deletes the new one); ``delete`` of a missing row is a no-op; ``due`` returns the rows of
one bucket with ``due_ms <= until_ms`` in due order; ``advance`` never moves a cursor
backwards from the caller's point of view (it sets it; callers only ever pass larger values).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUCKET_MS",
    "DEFAULT_SETTLE_MS",
    "TimerRow",
    "TimerStore",
    "bucket_of",
    "cursor_floor",
]

DEFAULT_BUCKET_MS = 60_000
DEFAULT_SETTLE_MS = 60_000


def bucket_of(due_ms: int, now_ms: int, bucket_ms: int = DEFAULT_BUCKET_MS) -> int:
    """The bucket a row for a timer due at ``due_ms`` goes to when written at ``now_ms``
    (never one before "now": a timer scheduled in the past is due at once)."""
    return max(due_ms, now_ms) // bucket_ms


def cursor_floor(
    now_ms: int, bucket_ms: int = DEFAULT_BUCKET_MS, settle_ms: int = DEFAULT_SETTLE_MS
) -> int:
    """The bucket a new cursor starts at when a writer whose clock says ``now_ms`` creates it:
    at or before the bucket of every row any writer (clocks within ``settle_ms``) may still
    write. Not the bucket of the first row: a first row due in a year would hide every
    nearer row of its shard behind the cursor."""
    return (now_ms - settle_ms) // bucket_ms


@dataclass(frozen=True, slots=True)
class TimerRow:
    """One pending timer in the index. ``timer_id`` is ``"<name>@<sequence nr>"`` (the first
    event of the command that scheduled it): a re-schedule under the same name is a new id.
    ``traceparent``/``tracestate``: the W3C trace context of the scheduling command's journal
    append ("" when untraced); not part of the key. The timer service sends it with the fire,
    and the fire's span continues that trace (:mod:`raysource.runtime.tracing`): the row is
    what survives a restart whatever the activation recovered from."""

    type_name: str
    shard: int
    bucket: int
    due_ms: int
    persistence_id: str
    name: str
    timer_id: str
    traceparent: str = ""
    tracestate: str = ""

    @property
    def key(self) -> tuple[str, int, int, int, str, str, str]:
        return (
            self.type_name,
            self.shard,
            self.bucket,
            self.due_ms,
            self.persistence_id,
            self.name,
            self.timer_id,
        )


class TimerStore(abc.ABC):
    """The durable index of pending timers (see the module docstring)."""

    bucket_ms: int = DEFAULT_BUCKET_MS

    @abc.abstractmethod
    async def upsert(self, rows: Sequence[TimerRow]) -> None:
        """Insert (or overwrite) ``rows``; ensures each shard's cursor exists first (at the
        smallest row bucket if missing: writers call :meth:`ensure_cursor` before)."""

    @abc.abstractmethod
    async def ensure_cursor(self, type_name: str, shard: int, bucket: int) -> None:
        """Create the cursor of ``(type, shard)`` at ``bucket`` unless it exists (an existing
        cursor never moves; a writer passes :func:`cursor_floor` of its clock)."""

    @abc.abstractmethod
    async def delete(self, rows: Sequence[TimerRow]) -> None:
        """Delete ``rows`` (by primary key; missing rows are ignored)."""

    @abc.abstractmethod
    async def due(
        self, type_name: str, shard: int, bucket: int, until_ms: int, *, limit: int = 1000
    ) -> list[TimerRow]:
        """The rows of one bucket with ``due_ms <= until_ms``, earliest first (at most
        ``limit``)."""

    @abc.abstractmethod
    async def cursor(self, type_name: str, shard: int) -> int | None:
        """The oldest bucket of ``(type, shard)`` that may hold rows; None: never written."""

    @abc.abstractmethod
    async def advance(self, type_name: str, shard: int, bucket: int) -> None:
        """Set the cursor of ``(type, shard)`` to ``bucket`` (a timer service, after checking
        that every bucket before it is empty and settled)."""

    async def close(self) -> None:
        """Release resources (idempotent)."""
