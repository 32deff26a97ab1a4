"""The cut of a tag, read once and split among read tasks (:func:`read_events`' planning).

Planning (:func:`read_cut`, in the driver, once per dataset) reads the tag's index up to the
cut through the journal's tag query (:meth:`Journal.events_by_tag`: stable rows only, the
epoch-fenced log's readers' rules) and keeps, per persistence id, the sequence numbers and tag
offsets it saw: the **cut index**. :func:`split_cut` divides it into read tasks by slice (and
time range), as **chunks**: ``(persistence id, first, last sequence number)`` runs of one
aggregate. A read task (:func:`read_chunk`) reads its chunks' events from the aggregates' own
logs (:meth:`Journal.replay`, one partition each), never the tag again: ``n`` tasks read the tag
once between them, not ``n`` times.

Which events: per aggregate, a gap-free run up to the highest sequence number the index has for
it (from 1 for a read from the start, else from the lowest it has), the events of the tag in
it. So the tasks' union is each aggregate's log (as ``raysource events`` lists it) up to the
cut, each event once (a re-written tag row is one index entry), in order per aggregate. An
event whose tag row landed after the cut but whose successor's is in it (a slow tag write,
re-written later) is in the run too: a view written from the dataset never skips it. An event
the log no longer has (deleted) is not returned, as ``raysource events`` does not.

An event written during the read has a tag offset after the cut (the cut is at or before the
tag query's visibility cutoff when planned): it is not in the index, so not in the dataset, and
a reader resuming after the cut (a projection worker) gets it; a higher sequence number of an
aggregate in the index can only have been written before it.

With ``time_ranges > 1`` an aggregate's run is split where its events cross a range boundary
(each event in the earliest range of it or a later event), so an aggregate may span tasks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from raysource.journal.api import Journal, StoredEvent, TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import JournalUnavailableError
from raysource.readside.projections import slice_of
from raysource.runtime.aggregate import split_persistence_id

__all__ = ["Chunk", "CutIndex", "Part", "read_chunk", "read_cut", "split_cut"]

READ_ATTEMPTS = 8  # store errors in a row a read rides out (then it fails)


@dataclass(frozen=True)
class Chunk:
    """Events ``first..last`` of ``persistence_id`` (those of the tag); ``seqs``/``offsets``:
    the index's sequence numbers in the run (ascending) and their tag offsets (timestamps)."""

    persistence_id: str
    first: int
    last: int
    seqs: tuple[int, ...]
    offsets: tuple[int, ...]

    def offset_of(self, seq: int) -> int:
        """The tag offset timestamp of ``seq`` (not indexed: its next indexed successor's)."""
        return self.offsets[min(bisect.bisect_left(self.seqs, seq), len(self.seqs) - 1)]


@dataclass(frozen=True)
class Part:
    """One read task (number ``index``): slice ``slice`` of ``n_slices``, its chunks."""

    index: int
    slice: int
    n_slices: int
    chunks: tuple[Chunk, ...]


@dataclass
class CutIndex:
    """Per persistence id, sequence number -> tag offset timestamp, up to ``until``."""

    until: TagOffset
    from_start: bool
    events: dict[str, dict[int, int]]
    rows: int = 0  # tag rows read (re-written rows included)

    @property
    def first_us(self) -> int | None:
        return min((min(s.values()) for s in self.events.values()), default=None)


async def read_cut(
    config: CassandraConfig,
    tag: str,
    after: TagOffset | None,
    until: TagOffset,
    aggregate_type: str | None = None,
) -> CutIndex:
    """The cut index of ``tag`` in ``(after, until]`` (see the module docstring); a store
    error resumes the tag query after the last row read, with backoff."""
    from raysource.journal.cassandra.journal import CassandraJournal

    index = CutIndex(until, after is None, {})
    position, failures = after, 0
    journal = await CassandraJournal.connect(config)
    try:
        while True:
            try:
                async with contextlib.aclosing(journal.events_by_tag(tag, position)) as rows:
                    async for te in rows:
                        if te.offset > until:
                            break
                        position, failures = te.offset, 0
                        index.rows += 1
                        pid = te.event.persistence_id
                        if aggregate_type and split_persistence_id(pid)[0] != aggregate_type:
                            continue
                        index.events.setdefault(pid, {}).setdefault(
                            te.event.sequence_nr, te.offset.timestamp_us
                        )
                return index
            except JournalUnavailableError:
                failures += 1
                if failures >= READ_ATTEMPTS:
                    raise
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
    finally:
        await journal.close()


def split_cut(index: CutIndex, slices: int, time_ranges: int = 1) -> list[Part]:
    """The read tasks of ``index``: ``slices * time_ranges`` parts (slice-major), each
    aggregate's chunks in the parts of its slice (see the module docstring)."""
    first = index.first_us
    lo = (first - 1) if first is not None else index.until.timestamp_us
    width = max(1, (index.until.timestamp_us - lo) // time_ranges)
    bounds = [lo + i * width for i in range(1, time_ranges)]  # range r: (b[r-1], b[r]]
    chunks: list[list[list[Chunk]]] = [[[] for _ in range(time_ranges)] for _ in range(slices)]
    for pid in sorted(index.events):
        seqs = sorted(index.events[pid])
        # each event in the earliest range of it or a later event of its aggregate
        ranges = [0] * len(seqs)
        low = time_ranges - 1
        for i in range(len(seqs) - 1, -1, -1):
            low = min(low, bisect.bisect_left(bounds, index.events[pid][seqs[i]]))
            ranges[i] = low
        start = 1 if index.from_start else seqs[0]
        k = slice_of(pid, slices)
        i = 0
        while i < len(seqs):
            j = i
            while j + 1 < len(seqs) and ranges[j + 1] == ranges[i]:
                j += 1
            run = seqs[i : j + 1]
            offsets = tuple(index.events[pid][s] for s in run)
            chunks[k][ranges[i]].append(Chunk(pid, start, run[-1], tuple(run), offsets))
            start, i = run[-1] + 1, j + 1
    return [
        Part(k * time_ranges + r, k, slices, tuple(chunks[k][r]))
        for k in range(slices)
        for r in range(time_ranges)
    ]


async def read_chunk(journal: Journal, tag: str, chunk: Chunk) -> list[StoredEvent]:
    """The events of ``chunk`` (those of ``tag``), from the aggregate's log, in order; a
    store error reads the chunk again, with backoff."""
    failures = 0
    while True:
        try:
            return [
                e
                async for e in journal.replay(chunk.persistence_id, chunk.first, chunk.last)
                if tag in e.tags
            ]
        except JournalUnavailableError:
            failures += 1
            if failures >= READ_ATTEMPTS:
                raise
            await asyncio.sleep(min(0.2 * 2**failures, 5.0))


async def read_chunks(
    journal: Journal, tag: str, chunks: tuple[Chunk, ...], window: int = 8
) -> AsyncIterator[tuple[Chunk, list[StoredEvent]]]:
    """``(chunk, its events)`` for ``chunks`` in order, ``window`` chunks read ahead at once."""
    pending: list[asyncio.Task[list[StoredEvent]]] = []
    try:
        for i, chunk in enumerate(chunks):
            while len(pending) < window and i + len(pending) < len(chunks):
                nxt = chunks[i + len(pending)]
                pending.append(asyncio.ensure_future(read_chunk(journal, tag, nxt)))
            yield chunk, await pending.pop(0)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
