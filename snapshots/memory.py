"""An in-memory snapshot store with the contract of the Cassandra one (see
``raysource.snapshots.api``)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from raysource.journal.api import StoredSnapshot
from raysource.journal.errors import JournalUnavailableError
from raysource.snapshots.api import SnapshotStore

__all__ = ["InMemorySnapshotStore"]


class InMemorySnapshotStore(SnapshotStore):
    """A dict-backed :class:`~raysource.snapshots.api.SnapshotStore`.

    ``latency`` seconds are slept at the start of every call; ``fail_next_saves(n, exc)`` makes
    the next ``n`` saves raise (nothing stored); ``save_count`` and ``stats`` count calls.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self._snaps: dict[str, dict[int, StoredSnapshot]] = {}
        self._fail_saves: list[type[BaseException] | BaseException] = []
        self.save_count = 0
        self.stats: Counter[str] = Counter()

    def fail_next_saves(
        self, n: int = 1, exc: type[BaseException] | BaseException = JournalUnavailableError
    ) -> None:
        self._fail_saves.extend([exc] * n)

    def snapshots(self, persistence_id: str) -> list[StoredSnapshot]:
        """Every stored snapshot of ``persistence_id``, ascending by sequence number."""
        s = self._snaps.get(persistence_id, {})
        return [s[k] for k in sorted(s)]

    async def _enter(self, op: str) -> None:
        self.stats[op] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    async def save(self, snapshot: StoredSnapshot) -> None:
        await self._enter("save")
        if self._fail_saves:
            exc = self._fail_saves.pop(0)
            raise exc("injected failure") if isinstance(exc, type) else exc
        if not snapshot.persistence_id or snapshot.sequence_nr < 0:
            raise ValueError(
                f"invalid snapshot key {snapshot.persistence_id!r}/{snapshot.sequence_nr}"
            )
        self._snaps.setdefault(snapshot.persistence_id, {})[snapshot.sequence_nr] = snapshot
        self.save_count += 1

    async def load(
        self, persistence_id: str, max_sequence_nr: int = sys.maxsize
    ) -> StoredSnapshot | None:
        await self._enter("load")
        snaps = self._snaps.get(persistence_id, {})
        best = max((s for s in snaps if s <= max_sequence_nr), default=None)
        return None if best is None else snaps[best]

    async def keep_newest(self, persistence_id: str, keep: int) -> None:
        await self._enter("keep_newest")
        snaps = self._snaps.get(persistence_id, {})
        for s in sorted(snaps, reverse=True)[max(keep, 0) :]:
            del snaps[s]

    async def delete(self, persistence_id: str, sequence_nr: int) -> None:
        await self._enter("delete")
        self._snaps.get(persistence_id, {}).pop(sequence_nr, None)
