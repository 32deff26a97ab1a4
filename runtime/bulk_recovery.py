"""Activations in bulk: the aggregates a host is asked to activate in one event-loop tick (a
first touch of many, a shard moving in, a restart, :meth:`AggregateHost.activate_many`) start
together.

Phases of one batch (every phase keeps the single activation's order per aggregate: its claim
before any read of its history, its recovery before its first command):

1. **Claims together**: every activation of the batch claims at once (at most
   ``concurrency`` claims of the host in flight) and starts as soon as its own claim is in.
   The Cassandra epoch guard shares the plain reads of the claims waiting in one loop tick
   (fence, head record, deletion mark, first partitions: ``IN`` reads,
   ``raysource.journal.cassandra.bulk_claims``); other journals claim one by one.
2. **Never written: no reads.** An aggregate whose claim says its log holds no event
   (highest 0) starts at once with its initial state: no snapshot load (a snapshot of a log
   without events could only be discarded), no highest read, no replay.
3. **Replays, bounded**: the others recover as before (snapshot, replay), at most
   ``max_concurrent_recoveries`` of the host at a time, with the highest sequence number
   the claim already read.

The core reads through :class:`_Claimed` (the claim is done, the highest known) during its
recovery only; once it has recovered, it talks to the host's journal directly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raysource.journal.api import Journal, StoredEvent, StoredSnapshot
from raysource.snapshots.api import SnapshotStore

if TYPE_CHECKING:
    from raysource.runtime.core import EntityCore
    from raysource.runtime.host import AggregateHost

__all__ = ["BulkActivations"]


class BulkActivations:
    """The host's activation queue: :meth:`request` registers an activation and returns the
    future it resolves (None, or the activation's error); the requests of one loop tick form
    one batch (at most ``max_batch``); batches run concurrently."""

    def __init__(self, host: AggregateHost, *, max_batch: int = 256, concurrency: int = 32):
        self._host = host
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._pending: list[tuple[str, EntityCore, asyncio.Future[Any]]] = []
        self._claims = asyncio.Semaphore(max(1, concurrency))  # claims in flight, host-wide
        self._scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.batches = 0  # batches started (diagnostics, tests)
        self.fast = 0  # activations that found a log without events (no reads)

    def request(self, entity_id: str) -> asyncio.Future[Any]:
        """Register the activation of ``entity_id`` (the host's ``_activating`` entry) and
        queue it; the caller awaits the returned future."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        core = self._host._new_core(entity_id)
        self._host._activating[entity_id] = done
        self._pending.append((entity_id, core, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return done

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self.max_batch):
            task = asyncio.ensure_future(self._run(pending[i : i + self.max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, EntityCore, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        await asyncio.gather(*(self._claim_and_start(*item) for item in batch))

    async def _claim_and_start(
        self, entity_id: str, core: EntityCore, done: asyncio.Future[Any]
    ) -> None:
        """Claim, then recover, as soon as this activation's own claim is in: no activation
        of the batch waits for a slower batch-mate's claim. The claims of one loop tick still
        share their reads (the journal batches the reads asked for in one tick), and at most
        ``concurrency`` claims of the host run at once."""
        journal = self._host.journal
        async with self._claims:
            try:
                claimed: BaseException | int | None = (
                    await journal.begin_activations(
                        [(core.persistence_id, core.writer_id)], concurrency=1
                    )
                )[0]
            except BaseException as exc:  # noqa: BLE001 - this activation's outcome
                claimed = exc
        await self._start(entity_id, core, done, claimed)

    async def _start(
        self,
        entity_id: str,
        core: EntityCore,
        done: asyncio.Future[Any],
        claimed: BaseException | int | None,
    ) -> None:
        host = self._host
        if isinstance(claimed, BaseException):
            host._activation_failed(entity_id, core, done, claimed)
            return
        journal, store = core.journal, core.snapshot_store
        core.journal = _Claimed(journal, core.persistence_id, claimed)
        if claimed == 0:
            self.fast += 1
            core.snapshot_store = _NoSnapshot(store)
        try:
            if claimed == 0:  # nothing to read: no need to wait for a recovery slot
                recovery = await core.start()
            else:
                async with host._recoveries:
                    recovery = await core.start()
        except BaseException as exc:  # noqa: BLE001 - the activation's outcome
            host._activation_failed(entity_id, core, done, exc)
            return
        finally:
            core.journal, core.snapshot_store = journal, store
        host._activated(entity_id, core, done, recovery)


class _Claimed(Journal):
    """The journal as a core sees it while it recovers inside a batch: its claim is already
    made (``begin_activation`` does nothing) and its highest sequence number, when known,
    needs no read. Everything else goes to ``inner``."""

    def __init__(self, inner: Journal, persistence_id: str, highest: int | None) -> None:
        self.inner, self._pid, self._highest = inner, persistence_id, highest
        self.capabilities, self.max_group_size = inner.capabilities, inner.max_group_size

    async def begin_activation(self, persistence_id: str, writer_id: str) -> None:
        return None  # claimed by the batch

    async def highest_sequence_nr(self, persistence_id: str) -> int:
        if persistence_id == self._pid and self._highest is not None:
            return self._highest
        return await self.inner.highest_sequence_nr(persistence_id)

    async def append(self, events: Any) -> None:
        await self.inner.append(events)

    def replay(
        self, persistence_id: str, from_sequence_nr: int = 1, to_sequence_nr: int | None = None
    ) -> Any:
        return self.inner.replay(persistence_id, from_sequence_nr, to_sequence_nr)

    async def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        await self.inner.delete_to(persistence_id, to_sequence_nr)

    def events_by_tag(self, tag: str, after: Any = None, *, limit: int | None = None) -> Any:
        return self.inner.events_by_tag(tag, after, limit=limit)

    async def repair_tags(self, events: Sequence[StoredEvent]) -> int:
        return await self.inner.repair_tags(events)

    async def end_activation(self, persistence_id: str, writer_id: str) -> None:
        await self.inner.end_activation(persistence_id, writer_id)

    async def close(self) -> None:
        await self.inner.close()


class _NoSnapshot(SnapshotStore):
    """The snapshot store of an aggregate whose log holds no event: nothing to load (any
    snapshot would be beyond the journal's highest and discarded); the rest goes to ``inner``."""

    def __init__(self, inner: SnapshotStore) -> None:
        self.inner = inner

    async def load(
        self, persistence_id: str, max_sequence_nr: int = sys.maxsize
    ) -> StoredSnapshot | None:
        return None

    async def save(self, snapshot: StoredSnapshot) -> None:
        await self.inner.save(snapshot)

    async def keep_newest(self, persistence_id: str, keep: int) -> None:
        await self.inner.keep_newest(persistence_id, keep)

    async def delete(self, persistence_id: str, sequence_nr: int) -> None:
        await self.inner.delete(persistence_id, sequence_nr)

    async def close(self) -> None:
        await self.inner.close()
