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

from collections.abc import Callable

from raysource.journal.api import Journal, StoredEvent
from raysource.readside.offsets import OffsetStore, ParkedStream, now_us

__all__ = ["ParkedStreams"]


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
        self._parked = {p.persistence_id: p for p in await self.store.parked(self.projection)
                        if mine(p.persistence_id)}

    async def park(self, persistence_id: str, sequence_nr: int, error: str) -> ParkedStream:
        rec = ParkedStream(self.projection, persistence_id, self.worker, sequence_nr, error,
                           now_us())
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
    async def events_from(journal: Journal, persistence_id: str, sequence_nr: int,
                          tag: str, to_sequence_nr: int | None = None) -> list[StoredEvent]:
        """The aggregate's stored events from ``sequence_nr`` (to ``to_sequence_nr``) that
        carry ``tag``."""
        return [e async for e in journal.replay(persistence_id, sequence_nr, to_sequence_nr)
                if tag in e.tags]
