"""Host-wide writes: the epoch guard's event batches (W1) of many aggregates in one request.

A host serves many aggregates from one event loop and one journal; with one command per
aggregate in flight (the peer benchmark's W2), per-aggregate group commit has nothing to group,
and each command paid one Cassandra request for its events. :class:`SharedWrites` collects the
W1 parts asked for while the loop runs one step (``loop.call_soon``, as the shared fence reads
of ``raysource.journal.cassandra.epochs``) and sends them as **one unlogged batch** per chunk:

* each *part* is one append: the rows of one aggregate's group, all in one partition
  ``(persistence_id, partition_nr)`` (a group lives in the partition of its first event), so
  the coordinator turns it into one mutation, applied atomically on each replica exactly as
  the single-partition batch it replaces (an unlogged batch is split by partition; parts of
  the same partition merge into one mutation: still atomic);
* a chunk holds at most ``max_parts`` partitions and about ``max_bytes`` of row data
  (``CassandraConfig.shared_write_partitions``/``shared_write_bytes``): Cassandra answers an
  unlogged batch over ``unlogged_batch_across_partitions_warn_threshold`` partitions (default
  10) or ``batch_size_warn_threshold`` bytes (default 5 KiB) with a warning (the driver logs
  one per response) and refuses one over ``batch_size_fail_threshold`` (default 50 KiB). A
  part bigger than ``max_bytes`` goes alone, as a single-partition batch (exempt);
* a chunk of one part is sent as that single-partition batch (a sequential caller pays
  nothing).

**What a shared request's outcome means for each part.** Answered: every part is stored (a
batch is acknowledged only when every mutation met its consistency level). Failed in any way
(timeout, lost connection, overloaded coordinator, an error after sending): *every* part's
outcome is unknown (some mutations may have been applied, others not, and any of them may land
later), so every part's append raises and its epoch ends (``WriterFencedError``, never "not
applied"); each aggregate then recovers on its own, as after its own failed write. The fence
check is unchanged and stays per aggregate (each part passes its own fence read after the
shared batch was acknowledged; the reads of one tick go out as one request), so the
protocol's argument (``design/fencing.md`` §4, L3) holds part by part: a part is acknowledged
only if its batch was acknowledged before its fence read named its epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra.query import BatchStatement, BatchType

from raysource.journal.cassandra.driver_errors import consistency
from raysource.journal.cassandra.session import RAW_PROFILE

__all__ = ["SharedBatch", "SharedWrites", "row_bytes"]


class SharedBatch(BatchStatement):  # type: ignore[misc]  # the driver is untyped (Any)
    """An unlogged batch carrying the W1 parts of several aggregates (``parts`` of them);
    a class of its own so that the driver-level fault kit can aim at it."""

    parts: int = 0


def row_bytes(row: Sequence[Any]) -> int:
    """A rough size of one event row's data (what Cassandra's batch size checks count)."""
    n = 64
    for v in row:
        if isinstance(v, bytes | str):
            n += len(v)
        elif isinstance(v, dict | set | frozenset):
            n += sum(len(str(x)) for x in v) + 16
        else:
            n += 8
    return n


@dataclass(slots=True)
class _Part:
    rows: list[tuple[Any, ...]]
    size: int
    future: asyncio.Future[None]


@dataclass
class SharedStats:
    """Requests sent and parts (appends) they carried, since the journal started."""

    requests: int = 0
    parts: int = 0
    shared_requests: int = 0  # requests with more than one part
    largest: int = 0
    by_size: dict[int, int] = field(default_factory=dict)


class SharedWrites:
    """See the module docstring. ``insert``: the prepared event insert; ``level``: the write
    consistency's name."""

    def __init__(
        self,
        session: Any,
        insert: Any,
        level: str,
        *,
        max_parts: int,
        max_bytes: int,
    ) -> None:
        self.session, self.insert, self.level = session, insert, consistency(level)
        self.max_parts, self.max_bytes = max_parts, max_bytes
        self.stats = SharedStats()
        self._pending: list[_Part] = []
        self._scheduled = False

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Send ``rows`` (one part: one aggregate's group, one partition) with the other parts
        asked for in this loop step; returns once the request carrying them was acknowledged,
        raises the request's error (a ``JournalError``) otherwise: outcome unknown."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Part(rows, sum(row_bytes(r) for r in rows), fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        chunk: list[_Part] = []
        keys: set[tuple[Any, Any]] = set()
        size = 0
        for part in pending:
            key = (part.rows[0][0], part.rows[0][1])  # (persistence_id, partition_nr)
            grows = key not in keys
            if chunk and (
                (grows and len(keys) >= self.max_parts) or size + part.size > self.max_bytes
            ):
                self._send(chunk)
                chunk, keys, size = [], set(), 0
                grows = True
            chunk.append(part)
            if grows:
                keys.add(key)
            size += part.size
        if chunk:
            self._send(chunk)

    def _send(self, chunk: list[_Part]) -> None:
        shared = len(chunk) > 1
        batch = (SharedBatch if shared else BatchStatement)(
            BatchType.UNLOGGED, consistency_level=self.level
        )
        batch.is_idempotent = True  # the same rows again: harmless (epoch in the key)
        for part in chunk:
            for row in part.rows:
                batch.add(self.insert, row)
        if shared:
            batch.parts = len(chunk)
        st = self.stats
        st.requests += 1
        st.parts += len(chunk)
        st.shared_requests += shared
        st.largest = max(st.largest, len(chunk))
        st.by_size[len(chunk)] = st.by_size.get(len(chunk), 0) + 1
        asyncio.ensure_future(self._run(batch, chunk))

    async def _run(self, batch: BatchStatement, chunk: list[_Part]) -> None:
        try:
            await self.session.execute_batch(batch, profile=RAW_PROFILE)
        except BaseException as exc:  # noqa: BLE001 - every part's outcome is unknown
            for part in chunk:
                if not part.future.done():
                    part.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for part in chunk:
            if not part.future.done():
                part.future.set_result(None)
