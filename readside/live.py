"""The live path of a projection worker: events offered by writers right after their append.

After an append is acknowledged, the host that wrote it offers the events to the projection
workers subscribed to their tags (:mod:`raysource.runtime.actors.live`: through Ray, best
effort, bounded). A worker puts them in its :class:`LiveInbox` (bounded: the oldest are dropped
beyond ``ProjectionSettings.live_buffer``) and applies them at once, ahead of the tag query
(which only sees an event after the journal's visibility delay).

Rules that keep the read side complete and exactly-once:

* an offered event is applied only after every earlier event of its aggregate: if it is not
  the **next** one the worker knows of (``sequence_nr == last applied + 1``, or 1 for an
  aggregate never seen), the missing ones are first read from the journal by persistence id
  (a *backfill*: a dropped or reordered message, an untagged event in between; the journal
  holds them, since this later event is acknowledged). An aggregate the worker does not know
  (none of its events seen since the worker started) and a gap of more than ``max_backfill``
  events are left to the durable path, which delivers every event in order;
* an event at or below the last applied number is a duplicate and is dropped (both paths
  de-duplicate by ``(persistence_id, sequence_nr)``);
* the live path never moves the stored offset: only the durable tag query does, past what it
  delivered, so a restart re-delivers from the offset (de-duplicated by the handler, e.g.
  :class:`~raysource.readside.views.EffectivelyOnceView`) and never skips an event;
* the worker applies live and durable events under one lock, never concurrently.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raysource.journal.api import StoredEvent

__all__ = ["LiveInbox", "LiveStats"]


@dataclass
class LiveStats:
    """Counters of one worker's live path."""

    offered: int = 0  # events offered to this worker (its tag, any slice)
    applied: int = 0  # applied through the live path
    duplicates: int = 0  # already applied (usually by the durable path)
    backfilled: int = 0  # missed events read from the journal by id to close a gap
    gaps: int = 0  # after a gap it could not close: left to the durable path
    dropped: int = 0  # pushed out of a full inbox, or offered while not running
    applies: int = 0  # handler calls of the live path
    apply_s: float = 0.0  # their total duration
    apply_s_max: float = 0.0
    wait_s_max: float = 0.0  # longest an event waited in the inbox before its apply began

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "applied": self.applied,
            "backfilled": self.backfilled,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "dropped": self.dropped,
            "applies": self.applies,
            "apply_ms_mean": round(self.apply_s / self.applies * 1e3, 1) if self.applies else None,
            "apply_ms_max": round(self.apply_s_max * 1e3, 1),
            "wait_ms_max": round(self.wait_s_max * 1e3, 1),
        }

    def timed(self, started: float, oldest: float | None) -> None:
        """Record one apply that began at ``started`` (monotonic) and just ended; ``oldest``:
        when the oldest of its events arrived."""
        took = time.monotonic() - started
        self.applies += 1
        self.apply_s += took
        self.apply_s_max = max(self.apply_s_max, took)
        if oldest is not None:
            self.wait_s_max = max(self.wait_s_max, started - oldest)


class LiveInbox:
    """Bounded buffer of offered events, and the rule that picks which to apply."""

    def __init__(self, capacity: int, max_backfill: int = 1000) -> None:
        self._events: deque[StoredEvent] = deque()
        self.capacity = capacity
        self.max_backfill = max_backfill
        self.oldest: float | None = None
        self.stats = LiveStats()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, events: Iterable[StoredEvent]) -> None:
        if not self._events:
            self.oldest = time.monotonic()
        for e in events:
            self.stats.offered += 1
            self._events.append(e)
            if len(self._events) > self.capacity:
                self._events.popleft()
                self.stats.dropped += 1

    def drop_all(self) -> None:
        self.stats.dropped += len(self._events)
        self._events.clear()

    def take(self) -> list[StoredEvent]:
        """Every buffered event (``oldest``: when the first of them arrived)."""
        out = list(self._events)
        self._events.clear()
        return out

    def select(
        self,
        events: list[StoredEvent],
        wanted: Callable[[str], bool],
        last: Callable[[str], int | None],
    ) -> list[tuple[StoredEvent, int | None]]:
        """What to apply now, in order, as ``(event, backfill_from)``: for each aggregate
        ``wanted`` (its slice, not parked), the events that continue its applied sequence
        (``last(pid)``: the highest applied number, None if unknown). ``backfill_from`` is
        set when the event follows a gap after a known number: the caller first applies the
        aggregate's stored events ``backfill_from .. sequence_nr - 1`` that carry the tag,
        read from the journal by persistence id (they are durable: this one is acknowledged).
        An aggregate not known yet starts only at its first event."""
        out: list[tuple[StoredEvent, int | None]] = []
        running: dict[str, int | None] = {}
        for e in events:
            pid = e.persistence_id
            if not wanted(pid):
                continue
            prev = running[pid] if pid in running else last(pid)
            if prev is not None and e.sequence_nr <= prev:
                self.stats.duplicates += 1
                continue
            fill_from = None
            if e.sequence_nr != (prev or 0) + 1:
                if prev is None or e.sequence_nr - prev > self.max_backfill:
                    self.stats.gaps += 1
                    continue
                fill_from = prev + 1
            running[pid] = e.sequence_nr
            out.append((e, fill_from))
        return out
