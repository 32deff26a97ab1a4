"""Parked aggregate streams of one projection worker.

A poison event (its handler failed ``retry_attempts`` times) parks only its aggregate's stream:
the worker records a :class:`~raysource.readside.offsets.ParkedStream` (durably, in the offset
store) and from then on passes over that aggregate's events in the tag stream, while every
other aggregate keeps flowing and the offset moves on. Nothing is lost: the parked record
names the first event not applied, and :meth:`ParkedStreams.events_from` re-reads the
aggregate's events from the journal (by persistence id, those carrying the projection's tag)
when an operator retries the stream (from the poison event) or skips the poison event (from
the one after it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.readside.errors import ProjectionError
from raysource.readside.offsets import OffsetStore, ParkedStream, now_us

__all__ = ["ParkedStreams", "retry_stream"]

log = logging.getLogger(__name__)


class ParkedStreams:
    """The parked streams of one worker (a cache of its rows in the offset store)."""

    def __init__(self, store: OffsetStore, projection: str, worker: str) -> None:
        self.store = store
        self.projection = projection
        self.worker = worker
        self._parked: dict[str, ParkedStream] = {}
        self.passed_over = 0  # tag-stream events of parked aggregates not applied (yet)

    def __contains__(self, persistence_id: str) -> bool:
        return persistence_id in self._parked

    def __len__(self) -> int:
        return len(self._parked)

    def get(self, persistence_id: str) -> ParkedStream | None:
        return self._parked.get(persistence_id)

    def records(self) -> list[ParkedStream]:
        return [self._parked[p] for p in sorted(self._parked)]

    async def load(self, mine: Callable[[str], bool]) -> None:
        """Take over the stored records of this worker's aggregates (by slice, so a record
        survives a change of worker key)."""
        self._parked = {
            p.persistence_id: p
            for p in await self.store.parked(self.projection)
            if mine(p.persistence_id)
        }

    async def park(self, persistence_id: str, sequence_nr: int, error: str) -> ParkedStream:
        rec = ParkedStream(
            self.projection, persistence_id, self.worker, sequence_nr, error, now_us()
        )
        await self.store.park(rec)
        self._parked[persistence_id] = rec
        return rec

    async def unpark(self, persistence_id: str) -> None:
        await self.store.unpark(self.projection, persistence_id)
        self._parked.pop(persistence_id, None)

    def restore(self, record: ParkedStream) -> None:
        """Put back an in-memory record taken by :meth:`forget` (a retry that failed)."""
        self._parked.setdefault(record.persistence_id, record)

    def forget(self, persistence_id: str) -> ParkedStream | None:
        """Drop the in-memory record only (while a retry re-applies the stream)."""
        return self._parked.pop(persistence_id, None)

    @staticmethod
    async def events_from(
        journal: Journal,
        persistence_id: str,
        sequence_nr: int,
        tag: str,
        to_sequence_nr: int | None = None,
    ) -> list[StoredEvent]:
        """The aggregate's stored events from ``sequence_nr`` (to ``to_sequence_nr``) that
        carry ``tag``."""
        return [
            e
            async for e in journal.replay(persistence_id, sequence_nr, to_sequence_nr)
            if tag in e.tags
        ]


async def retry_stream(worker: Any, persistence_id: str, *, skip: bool = False) -> dict[str, Any]:
    """Re-apply ``worker``'s parked stream of ``persistence_id`` from the journal: from its
    poison event, or (``skip``) from the event after it (which is then never applied). Runs
    under the worker's apply lock, one event at a time with the usual retries; if an event
    fails again the stream stays parked there. Returns ``applied`` (events) and ``parked``
    (the new record, or None). ``ProjectionError`` if the aggregate is not parked here, or if
    the worker was paused or stopped meanwhile (the stream stays parked)."""
    w = worker
    async with w._apply:
        rec = w.parked.get(persistence_id)
        if rec is None:
            raise ProjectionError(
                f"{persistence_id!r} is not parked in projection {w.spec.name!r} (worker {w.key})"
            )
        first = rec.sequence_nr + (1 if skip else 0)
        events = await ParkedStreams.events_from(w.journal, persistence_id, first, w.spec.tag)
        w.parked.forget(persistence_id)
        if skip:
            w._dedupe.mark(persistence_id, rec.sequence_nr)
        applied, again = 0, None
        try:
            for e in events:
                if w._dedupe.is_duplicate(e.persistence_id, e.sequence_nr):
                    continue
                if not await w._deliver_one(e, None):
                    again = w.parked.get(persistence_id)
                    break
                applied += 1
        except BaseException:
            w.parked.restore(rec)  # still parked
            if w._halt.is_set():
                raise ProjectionError(
                    f"{persistence_id!r}: the worker was paused or stopped "
                    "during the retry; the stream stays parked"
                ) from None
            raise
        if again is None:
            await w.store.unpark(w.spec.name, persistence_id)
    log.info(
        "projection %s %s: %s parked %r #%d: %d applied",
        w.spec.name,
        w.key,
        "skipped" if skip else "retried",
        persistence_id,
        rec.sequence_nr,
        applied,
    )
    return {
        "persistence_id": persistence_id,
        "skipped": rec.sequence_nr if skip else None,
        "applied": applied,
        "parked": again.as_dict() if again else None,
    }
