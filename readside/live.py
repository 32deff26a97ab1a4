"""The live path of a projection worker: events offered by writers right after their append.

After an append is acknowledged, the host that wrote it offers the events to the projection
workers subscribed to their tags (:mod:`raysource.runtime.actors.live`: through Ray, best
effort, bounded). A worker puts them in its :class:`LiveInbox` (bounded: the oldest are dropped
beyond ``ProjectionSettings.live_buffer``) and applies them at once, ahead of the tag query
(which only sees an event after the journal's visibility delay).

Rules that keep the read side complete and exactly-once:

* an offered event is applied only if it is the **next** event of its aggregate the worker
  knows of: ``sequence_nr == last applied + 1`` (or 1 for an aggregate never seen). Anything
  else (a gap: a dropped or reordered message, an aggregate not seen since the worker started)
  is left to the durable path, which delivers every event in order;
* an event at or below the last applied number is a duplicate and is dropped (both paths
  de-duplicate by ``(persistence_id, sequence_nr)``);
* the live path never moves the stored offset: only the durable tag query does, past what it
  delivered, so a restart re-delivers from the offset (de-duplicated by the handler, e.g.
  :class:`~raysource.readside.views.EffectivelyOnceView`) and never skips an event;
* the worker applies live and durable events under one lock, never concurrently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from raysource.journal.api import StoredEvent

__all__ = ["LiveInbox", "LiveStats"]


@dataclass
class LiveStats:
    """Counters of one worker's live path."""

    offered: int = 0  # events offered to this worker (its tag, any slice)
    applied: int = 0  # applied through the live path
    duplicates: int = 0  # already applied (usually by the durable path)
    gaps: int = 0  # not the next event of their aggregate: left to the durable path
    dropped: int = 0  # pushed out of a full inbox, or offered while not running

    def as_dict(self) -> dict[str, int]:
        return {"offered": self.offered, "applied": self.applied,
                "duplicates": self.duplicates, "gaps": self.gaps, "dropped": self.dropped}


class LiveInbox:
    """Bounded buffer of offered events, and the rule that picks which to apply."""

    def __init__(self, capacity: int) -> None:
        self._events: deque[StoredEvent] = deque()
        self.capacity = capacity
        self.stats = LiveStats()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, events: Iterable[StoredEvent]) -> None:
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
        out = list(self._events)
        self._events.clear()
        return out

    def select(self, events: list[StoredEvent], wanted: Callable[[str], bool],
               last: Callable[[str], int | None]) -> list[StoredEvent]:
        """The events to apply now, in order: for each aggregate ``wanted`` (its slice, not
        parked), those that continue its applied sequence (``last(pid)``: the highest applied
        number, None if unknown) without a gap."""
        out: list[StoredEvent] = []
        running: dict[str, int | None] = {}
        for e in events:
            pid = e.persistence_id
            if not wanted(pid):
                continue
            prev = running[pid] if pid in running else last(pid)
            if prev is not None and e.sequence_nr <= prev:
                self.stats.duplicates += 1
                continue
            if e.sequence_nr != (prev or 0) + 1:
                self.stats.gaps += 1
                continue
            running[pid] = e.sequence_nr
            out.append(e)
        return out
