"""The durable-timer steps of the entity core (:class:`raysource.runtime.core.EntityCore`
inherits them; kept apart for size): answering a fire, writing and repairing the timer index.
The pure parts (the pending table, how schedules are journaled) are
:mod:`raysource.runtime.timers`; the rules are in its module docstring.

These methods use the core's attributes (``timers``, ``timer_store``, ``journal``,
``persistence_id``, ``stats``, ``_seq``, ``_newest_group``, ``_wall_clock``, ...); they are not
meant to be used on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import ConfigError
from raysource.runtime.errors import AggregateStoppedError, HandlerError, TimerNotDueError
from raysource.runtime.flush import CoreStats, Flush, Outcome
from raysource.runtime.timers import EARLY_FIRE_TOLERANCE_MS, TimerFire, TimerTable
from raysource.timers.api import DEFAULT_SETTLE_MS, TimerRow, TimerStore, cursor_floor

__all__ = ["DurableTimers", "TimerSteps", "scheduled_at"]

log = logging.getLogger("raysource.runtime.core")


def scheduled_at(timer_id: str) -> int:
    """The sequence number in a timer id ``"<name>@<nr>"`` (0 if it has none)."""
    try:
        return int(timer_id.rsplit("@", 1)[1])
    except (IndexError, ValueError):
        return 0


class TimerSteps(Protocol):
    """What the entity core asks of its durable timers (``seq``: the core's sequence number;
    the flush's ``timers`` holds its tentative changes)."""

    def command_of(self, fire: TimerFire, outcome: Outcome, flush: Flush, seq: int) -> Any | None:
        """The command of a timer fire, or None: answered in ``outcome`` (not due, stale,
        undecodable, or beyond this activation), recorded in ``flush``."""
        ...

    async def confirm_unwritten_fires(self, flush: Flush, journal: Journal, seq: int) -> bool:
        """Decide the fires of ``flush`` answered without a write of theirs: True if they may
        be answered, False if this activation must stop (a newer one claimed)."""
        ...

    async def index(self, events: list[StoredEvent]) -> None:
        """Apply durable ``events``' timer metadata and write their index rows."""
        ...

    async def repair_index(self, newest_group: list[StoredEvent]) -> None:
        """Index the still pending schedules of the newest group (a recovery's repair)."""
        ...


class DurableTimers:
    """:class:`TimerSteps` over ``table`` (the activation's pending timers) and ``store`` (the
    timer index; None: a schedule is refused with ``ConfigError``). ``handler_error`` builds
    (and logs) the ``HandlerError`` of a fire whose command cannot be decoded."""

    def __init__(
        self,
        table: TimerTable,
        store: TimerStore | None,
        *,
        persistence_id: str,
        writer_id: str,
        stats: CoreStats,
        wall_clock: Callable[[], datetime],
        log_context: Callable[[], dict[str, Any]],
        handler_error: Callable[[str, Any, Exception], HandlerError],
    ) -> None:
        self.timers = table
        self.timer_store = store
        self.persistence_id = persistence_id
        self.writer_id = writer_id
        self.stats = stats
        self._wall_clock = wall_clock
        self.log_context = log_context
        self._handler_error = handler_error
        self._timer_cursor = False  # ensured the shard's cursor exists (once per activation)

    async def confirm_unwritten_fires(self, flush: Flush, journal: Journal, seq: int) -> bool:
        """Decide the fires of ``flush`` answered without a write of theirs (stale, beyond
        this activation, undecodable, or consumed without events): the pump deletes their
        rows once answered, so they are answered only if this activation is still the
        aggregate's writer. True: it is (a journal that fences per activation confirmed it
        with a read sent after the fires arrived, so every event a newer activation wrote
        would have fenced it); those beyond it are stale after all. False: a newer
        activation claimed (or this one's claim is gone): none of them is answered (their
        rows stay and fire again, on the live activation), and the caller stops; also when
        the fence cannot be read (as an append whose fence read keeps failing ends its
        epoch: the next activation recovers and the fires go there).

        A journal without a per-activation fence (``confirm_activation`` None) keeps the
        older rule: fires beyond this activation ask ``highest_sequence_nr``."""
        fires = flush.unwritten_fires
        if not fires:
            return True
        err: BaseException = AggregateStoppedError(
            f"{self.persistence_id}: a newer activation claimed this aggregate; its timer "
            f"fires go there (this activation {self.writer_id} stops)"
        )
        try:
            current = await journal.confirm_activation(self.persistence_id, self.writer_id)
        except Exception as exc:
            log.warning(
                "%s: cannot confirm this activation before answering timer fires: %r",
                self.persistence_id,
                exc,
                extra=self.log_context(),
            )
            err, current = exc, False
        else:
            if current is None:  # no per-activation fence: the older rule
                return await self._behind_without_fence(flush, journal, seq)
        if current:
            for o in flush.behind:  # the journal has no such event: stale after all
                o.error = None
            self.stats.stale_fires += flush.stale_fires + len(flush.behind)
            return True
        for o in fires:
            o.value, o.error = None, err
        return False

    async def _behind_without_fence(self, flush: Flush, journal: Journal, seq: int) -> bool:
        """A journal without a per-activation fence: stale and silent fires are answered;
        fires beyond this activation ask ``highest_sequence_nr`` (ahead: False, stop)."""
        self.stats.stale_fires += flush.stale_fires
        if not flush.behind:
            return True
        ahead = await self._journal_ahead(journal, seq)
        if ahead is False:
            for o in flush.behind:
                o.error = None
            self.stats.stale_fires += len(flush.behind)
            return True
        return False if ahead else True

    async def _journal_ahead(self, journal: Journal, seq: int) -> bool | None:
        """True if the journal holds events this activation never applied (another activation
        wrote after it recovered), None if that cannot be read."""
        try:
            return await journal.highest_sequence_nr(self.persistence_id) > seq
        except Exception as exc:
            log.warning(
                "%s: cannot read the highest sequence number: %r",
                self.persistence_id,
                exc,
                extra=self.log_context(),
            )
            return None

    async def index(self, events: list[StoredEvent]) -> None:
        """Apply the timer metadata of durable ``events`` to the table and write their index
        rows (before anyone is answered: an acknowledged schedule is always indexed)."""
        # the net effect per row key, in event order: a row written and then deleted (or
        # replaced) within these events is not written (nor deleted before it is written)
        net: dict[tuple[Any, ...], tuple[bool, TimerRow]] = {}
        for e in events:
            if e.metadata:
                u, d = self.timers.applied(e)
                net.update((r.key, (False, r)) for r in d)
                net.update((r.key, (True, r)) for r in u)
        upserts = [r for write, r in net.values() if write]
        deletes = [r for write, r in net.values() if not write]
        if not (upserts or deletes):
            return
        if self.timer_store is None:
            raise ConfigError(f"{self.persistence_id}: durable timers need a timer store")
        if deletes:  # best effort: a row left behind fires as stale and is deleted then
            try:
                await self.timer_store.delete(deletes)
            except Exception as exc:
                log.warning(
                    "%s: deleting cancelled timer rows failed: %r",
                    self.persistence_id,
                    exc,
                    extra=self.log_context(),
                )
        if upserts:
            await self._upsert_timer_rows(upserts)
            # The flush's timestamp chose the buckets; if the append and this write took so
            # long that a bucket may be retired (its end settle_ms past, for a pump whose clock
            # is up to half that ahead), the row is written anew into the current bucket.
            now = self._wall_clock()
            now_ms, bucket_ms = int(now.timestamp() * 1000), self.timer_store.bucket_ms
            late = [
                r.name
                for r in upserts
                if (r.bucket + 1) * bucket_ms + DEFAULT_SETTLE_MS // 2 <= now_ms
            ]
            if late:
                await self._upsert_timer_rows(self.timers.rows_now(late, now))

    async def _upsert_timer_rows(self, rows: list[TimerRow]) -> None:
        """Write index rows; first (once per activation) make sure the shard's cursor exists,
        at the floor of this writer's clock (never at a row's bucket: see raysource.timers)."""
        assert self.timer_store is not None
        if not self._timer_cursor:
            now_ms = int(self._wall_clock().timestamp() * 1000)
            await self.timer_store.ensure_cursor(
                self.timers.type_name,
                self.timers.shard,
                cursor_floor(now_ms, self.timer_store.bucket_ms),
            )
            self._timer_cursor = True
        await self.timer_store.upsert(rows)

    def command_of(self, fire: TimerFire, outcome: Outcome, flush: Flush, seq: int) -> Any | None:
        """The command of a timer fire, or None (answered: stale, undecodable, or this
        activation is behind; ``seq``: the flush's tentative sequence number)."""
        due_ms = self.timers.due_ms_of(fire, flush.timers)
        now_ms = int(flush.timestamp.timestamp() * 1000)
        if due_ms is not None and due_ms > now_ms + EARLY_FIRE_TOLERANCE_MS:
            outcome.error = TimerNotDueError(  # not run, still pending: fired again later
                f"{self.persistence_id}: timer {fire.timer_id} is due in "
                f"{(due_ms - now_ms) / 1000:.1f} s"
            )
            return None
        try:
            command = self.timers.command_of(fire, flush.timers)
        except Exception as exc:  # its stored command cannot be decoded any more
            outcome.error = self._handler_error("timer command decoding", fire, exc)
            flush.timers[fire.name] = None
            flush.silent_fires.append(fire)
            flush.unwritten_fires.append(outcome)
            return None
        if command is None and scheduled_at(fire.timer_id) > seq:
            # scheduled by an event this activation may never have seen (another activation
            # wrote after this one recovered): "stale" would delete a live timer's row. The
            # flush asks the journal before answering (_journal_ahead): stale after all, or
            # this error (the row stays) and the activation stops.
            outcome.error = AggregateStoppedError(
                f"{self.persistence_id}: the fire of {fire.timer_id} is beyond this "
                f"activation's #{seq} (another activation wrote); stopping"
            )
            flush.behind.append(outcome)
            flush.unwritten_fires.append(outcome)
        elif command is None:  # stale: answered once the activation is confirmed
            flush.stale_fires += 1
            flush.unwritten_fires.append(outcome)
        return command

    async def repair_index(self, newest_group: list[StoredEvent]) -> None:
        """Its writer may have died between the newest group and its timer rows: index the
        group's schedules that are still pending (in a bucket at or after now; a copy left
        in the old bucket fires as stale). Every older group was indexed before the next
        append."""
        names = [name for e in newest_group if e.metadata for name in self.timers.scheduled_in(e)]
        if names:
            if self.timer_store is None:
                raise ConfigError(f"{self.persistence_id}: durable timers need a timer store")
            await self._upsert_timer_rows(self.timers.rows_now(names, self._wall_clock()))
