"""The in-memory timer store (one process: the test kit, tests of the runtime alone)."""

from __future__ import annotations

from collections.abc import Sequence

from raysource.timers.api import DEFAULT_BUCKET_MS, TimerRow, TimerStore

__all__ = ["InMemoryTimerStore"]


class InMemoryTimerStore(TimerStore):
    """A :class:`~raysource.timers.api.TimerStore` in a dict. Not shared between processes."""

    def __init__(self, bucket_ms: int = DEFAULT_BUCKET_MS) -> None:
        self.bucket_ms = bucket_ms
        self._rows: dict[tuple[str, int, int], dict[tuple[int, str, str, str], TimerRow]] = {}
        self._cursors: dict[tuple[str, int], int] = {}

    async def upsert(self, rows: Sequence[TimerRow]) -> None:
        for r in rows:
            self._cursors.setdefault((r.type_name, r.shard), r.bucket)
            part = self._rows.setdefault((r.type_name, r.shard, r.bucket), {})
            part[(r.due_ms, r.persistence_id, r.name, r.timer_id)] = r

    async def ensure_cursor(self, type_name: str, shard: int, bucket: int) -> None:
        self._cursors.setdefault((type_name, shard), bucket)

    async def delete(self, rows: Sequence[TimerRow]) -> None:
        for r in rows:
            part = self._rows.get((r.type_name, r.shard, r.bucket))
            if part is not None:
                part.pop((r.due_ms, r.persistence_id, r.name, r.timer_id), None)

    async def due(
        self, type_name: str, shard: int, bucket: int, until_ms: int, *, limit: int = 1000
    ) -> list[TimerRow]:
        part = self._rows.get((type_name, shard, bucket), {})
        return [part[k] for k in sorted(part) if k[0] <= until_ms][:limit]

    async def cursor(self, type_name: str, shard: int) -> int | None:
        return self._cursors.get((type_name, shard))

    async def advance(self, type_name: str, shard: int, bucket: int) -> None:
        self._cursors[(type_name, shard)] = bucket

    def rows(self) -> list[TimerRow]:
        """Every row (tests and diagnostics)."""
        return [r for part in self._rows.values() for r in part.values()]
