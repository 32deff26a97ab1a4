"""An in-memory journal with exactly the contract (and errors) of the Cassandra journal.

Used by the test kit and by unit tests of the runtime. It can add latency to every call, inject
failures, and count writes (``write_count``, ``stats``) so tests can observe group commit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from raysource.journal.api import (
    Journal,
    JournalCapabilities,
    StoredEvent,
    TaggedEvent,
    TagOffset,
    validate_group,
)
from raysource.journal.errors import (
    ConcurrentWriteError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
)
from raysource.journal.serialization import Serialization

__all__ = ["InMemoryJournal"]


def _same_group(stored: dict[int, StoredEvent], events: Sequence[StoredEvent]) -> bool:
    """True if every event of ``events`` is already stored, by the same writer with the same
    payload (the same group sent again), as the Cassandra journal decides it."""
    for ev in events:
        old = stored.get(ev.sequence_nr)
        if old is None or (old.writer_id, bytes(old.payload)) != (ev.writer_id, bytes(ev.payload)):
            return False
    return True


@dataclass
class _Failure:
    remaining: int
    exc: type[BaseException] | BaseException
    after_write: bool


class InMemoryJournal(Journal):
    """A dict-backed :class:`~raysource.journal.api.Journal`.

    * ``fencing=True`` (default): an append touching any taken sequence number raises
      ``ConcurrentWriteError`` naming the first taken number and writes nothing — unless every
      number holds exactly this group already (same writer, same payloads: the same append
      sent twice), which is a success that writes nothing.
      ``fencing=False``: like the Cassandra journal's plain batch, the group is written
      unconditionally and overwrites events at the same sequence numbers (last write wins);
      the tag stream then holds both versions.
    * ``latency``: seconds slept at the start of every call (simulates a remote store).
    * ``serialization``: if given, every appended payload must decode with it (a test kit
      check that what is stored can be read back); failures raise its ``SerializationError``.
    * ``fail_next_appends(n, exc, after_write=False)``: the next ``n`` appends raise ``exc``;
      with ``after_write=True`` the events are stored first (an "outcome unknown" timeout).
    * ``write_count`` counts successful appends; ``stats`` counts calls per operation.
    * ``max_group_size`` mirrors the Cassandra journal's partition-size limit on groups.

    Gaps are not checked against the stored highest sequence number (neither backend can do
    that cheaply); writers append at ``highest_sequence_nr + 1``.
    Tag query order is global insertion order per tag; offsets are ``TagOffset(n)`` with ``n``
    a journal-wide counter, there is no visibility delay.
    """

    def __init__(
        self,
        *,
        fencing: bool = True,
        latency: float = 0.0,
        serialization: Serialization | None = None,
        max_group_size: int | None = None,
        page_size: int = 256,
    ) -> None:
        self.fencing = fencing
        self.latency = latency
        self.serialization = serialization
        self.max_group_size = max_group_size
        self.page_size = page_size
        self.capabilities = JournalCapabilities(fencing=fencing, tags=True, delete=True)
        self._events: dict[str, dict[int, StoredEvent]] = {}
        self._highest: dict[str, int] = {}
        self._deleted_to: dict[str, int] = {}
        self._tags: dict[str, list[TaggedEvent]] = {}
        self._tag_counter = itertools.count(1)
        self._failures: list[_Failure] = []
        self.write_count = 0
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ test hooks

    def fail_next_appends(
        self,
        n: int = 1,
        exc: type[BaseException] | BaseException | None = None,
        *,
        after_write: bool = False,
    ) -> None:
        """Make the next ``n`` appends raise ``exc`` (before writing, unless ``after_write``).
        Default: ``JournalUnavailableError`` (nothing written), or with ``after_write``
        ``JournalOutcomeUnknownError`` (stored, unconfirmed), as the journal contract says."""
        if exc is None:
            exc = JournalOutcomeUnknownError if after_write else JournalUnavailableError
        self._failures.append(_Failure(n, exc, after_write))

    def events(self, persistence_id: str) -> list[StoredEvent]:
        """Every stored event of ``persistence_id`` (deleted ones included), ascending."""
        evs = self._events.get(persistence_id, {})
        return [evs[k] for k in sorted(evs)]

    def persistence_ids(self) -> list[str]:
        return sorted(self._events)

    # ------------------------------------------------------------------ Journal

    async def _enter(self, op: str) -> None:
        self.stats[op] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def _take_failure(self) -> _Failure | None:
        while self._failures:
            f = self._failures[0]
            if f.remaining <= 0:
                self._failures.pop(0)
                continue
            f.remaining -= 1
            return f
        return None

    @staticmethod
    def _raise(f: _Failure) -> None:
        exc = f.exc
        if isinstance(exc, type):
            if issubclass(exc, ConcurrentWriteError):
                raise exc("<injected>", 0)
            raise exc("injected failure")
        raise exc

    async def append(self, events: Sequence[StoredEvent]) -> None:
        events = list(events)
        validate_group(events, self.max_group_size)
        await self._enter("append")
        failure = self._take_failure()
        if failure is not None and not failure.after_write:
            self._raise(failure)
        pid = events[0].persistence_id
        if self.serialization is not None:
            for ev in events:
                self.serialization.decode(
                    ev.serializer_id,
                    ev.manifest,
                    bytes(ev.payload),
                    persistence_id=pid,
                    sequence_nr=ev.sequence_nr,
                )
        stored = self._events.setdefault(pid, {})
        if self.fencing:
            if _same_group(stored, events):  # a re-send of a group already stored: done
                self.stats["resends"] += 1
                if failure is not None:
                    self._raise(failure)
                return
            for ev in events:
                if ev.sequence_nr in stored:
                    self.stats["conflicts"] += 1
                    raise ConcurrentWriteError(pid, ev.sequence_nr)
        # No await between the check and the write: the check-and-set is atomic on the loop.
        for ev in events:
            stored[ev.sequence_nr] = ev
            for tag in sorted(ev.tags):
                offset = TagOffset(next(self._tag_counter), pid, ev.sequence_nr)
                self._tags.setdefault(tag, []).append(TaggedEvent(tag, offset, ev))
        self._highest[pid] = max(self._highest.get(pid, 0), events[-1].sequence_nr)
        self.write_count += 1
        self.stats["events_written"] += len(events)
        if failure is not None:
            self._raise(failure)

    async def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int | None = None,
    ) -> AsyncGenerator[StoredEvent, None]:
        await self._enter("replay")
        start = max(from_sequence_nr, self._deleted_to.get(persistence_id, 0) + 1, 1)
        seq = start
        while True:
            # Re-read the bounds per page: the iterator sees appends made while it runs, like
            # a paged Cassandra read does.
            upper = self._highest.get(persistence_id, 0)
            if to_sequence_nr is not None:
                upper = min(upper, to_sequence_nr)
            if seq > upper:
                return
            stored = self._events.get(persistence_id, {})
            page_end = min(upper, seq + self.page_size - 1)
            page = [stored[s] for s in range(seq, page_end + 1) if s in stored]
            seq = page_end + 1
            for ev in page:
                yield ev
            await asyncio.sleep(0)

    async def highest_sequence_nr(self, persistence_id: str) -> int:
        await self._enter("highest")
        return self._highest.get(persistence_id, 0)

    async def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        await self._enter("delete")
        # Clamped to the highest sequence number so later appends are never hidden.
        to = min(to_sequence_nr, self._highest.get(persistence_id, 0))
        if to > self._deleted_to.get(persistence_id, 0):
            self._deleted_to[persistence_id] = to

    async def events_by_tag(
        self,
        tag: str,
        after: TagOffset | None = None,
        *,
        limit: int | None = None,
    ) -> AsyncGenerator[TaggedEvent, None]:
        await self._enter("events_by_tag")
        rows = list(self._tags.get(tag, ()))  # a "current" query: what is visible now
        after = after or TagOffset.start()
        n = 0
        for te in rows:
            if te.offset <= after:
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield te

    async def close(self) -> None:
        """No-op: the data stays readable so a test can "restart" on the same journal."""
