"""The Cassandra timer store: tables ``timer_index`` and ``timer_cursors`` (their CQL:
:mod:`raysource.journal.cassandra.timer_statements`).

A keyspace created before ``timer_index`` had its trace columns (``traceparent``,
``tracestate``) still works: the store finds out once, when it prepares, and then writes and
reads rows without trace context (logged once; ``raysource schema migrate`` adds the columns,
``raysource doctor`` names them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.cassandra.timer_statements import TimerStatements
from raysource.timers.api import DEFAULT_BUCKET_MS, TimerRow, TimerStore

__all__ = ["CassandraTimerStore"]

_BATCH = 100

log = logging.getLogger("raysource.timers")


class CassandraTimerStore(TimerStore):
    """A :class:`~raysource.timers.api.TimerStore` on Cassandra (prepared statements only).

    Writes use the config's write consistency, reads its read consistency; a cursor is created
    with one ``IF NOT EXISTS`` per ``(type, shard)`` and process (remembered afterwards).
    """

    def __init__(
        self,
        session: CassandraSession,
        config: CassandraConfig | None = None,
        *,
        bucket_ms: int = DEFAULT_BUCKET_MS,
        own_session: bool = False,
    ) -> None:
        self.session = session
        self.config = config or session.config
        self.bucket_ms = bucket_ms
        self._own_session = own_session
        self._ps: dict[str, Any] = {}
        self._traced = True  # timer_index has the trace columns (found out by _prepare)
        self._lock = asyncio.Lock()
        self._cursors_known: set[tuple[str, int]] = set()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        config: CassandraConfig,
        *,
        create_schema: bool = False,
        bucket_ms: int = DEFAULT_BUCKET_MS,
    ) -> CassandraTimerStore:
        session = await CassandraSession.open(config, create_schema=create_schema)
        try:
            store = cls(session, config, bucket_ms=bucket_ms, own_session=True)
            await store._prepare()
        except BaseException:
            await session.close()
            raise
        return store

    async def _prepare(self) -> dict[str, Any]:
        if self._ps:
            return self._ps
        async with self._lock:
            if not self._ps:
                ks = self.config.keyspace
                columns = await self.session.select_all(
                    TimerStatements(ks).columns, (ks,), profile=RAW_PROFILE
                )
                traced = {"traceparent", "tracestate"} <= {c[0] for c in columns}
                if not traced:
                    log.warning(
                        "%s.timer_index has no trace columns (an older schema): timer rows "
                        "carry no trace context until `raysource schema migrate` adds them",
                        ks,
                    )
                st = TimerStatements(ks, traced=traced)
                self._traced = traced
                w, r = self.config.write_consistency, self.config.read_consistency
                p = self.session.prepare
                self._ps = {
                    "upsert": await p(st.upsert, consistency_level=w),
                    "delete": await p(st.delete, consistency_level=w),
                    "due": await p(st.due, consistency_level=r),
                    "cursor_get": await p(st.cursor_get, consistency_level=r),
                    "cursor_new": await p(st.cursor_new, consistency_level=w),
                    "cursor_set": await p(st.cursor_set, consistency_level=w),
                }
        return self._ps

    async def upsert(self, rows: Sequence[TimerRow]) -> None:
        ps = await self._prepare()
        first: dict[tuple[str, int], int] = {}
        for r in rows:
            if (r.type_name, r.shard) not in self._cursors_known:
                first[(r.type_name, r.shard)] = min(
                    r.bucket, first.get((r.type_name, r.shard), r.bucket)
                )
        # the cursor exists before any row it must cover (see raysource.timers.api)
        await asyncio.gather(
            *(
                self.session.execute(ps["cursor_new"], (t, shard, bucket))
                for (t, shard), bucket in first.items()
            )
        )
        self._cursors_known.update(first)
        await self._per_partition(
            ps["upsert"],
            rows,
            self._upsert_values if self._traced else _key,
        )

    @staticmethod
    def _upsert_values(r: TimerRow) -> tuple[Any, ...]:
        return (*_key(r), r.traceparent or None, r.tracestate or None)

    async def ensure_cursor(self, type_name: str, shard: int, bucket: int) -> None:
        if (type_name, shard) not in self._cursors_known:
            ps = await self._prepare()
            await self.session.execute(ps["cursor_new"], (type_name, shard, bucket))
            self._cursors_known.add((type_name, shard))

    async def delete(self, rows: Sequence[TimerRow]) -> None:
        ps = await self._prepare()
        await self._per_partition(ps["delete"], rows, _key)

    async def _per_partition(
        self, ps: Any, rows: Sequence[TimerRow], values: Callable[[TimerRow], tuple[Any, ...]]
    ) -> None:
        """One unlogged single-partition batch per (type, shard, bucket) and 100 rows (a
        command scheduling 100 timers, or a pump answering 100 fires: one request)."""
        parts: dict[tuple[str, int, int], list[TimerRow]] = {}
        for r in rows:
            parts.setdefault((r.type_name, r.shard, r.bucket), []).append(r)
        w = self.config.write_consistency
        await asyncio.gather(
            *(
                self.session.execute_unlogged(
                    ps, [values(r) for r in part[i : i + _BATCH]], consistency_level=w
                )
                for part in parts.values()
                for i in range(0, len(part), _BATCH)
            )
        )

    async def due(
        self, type_name: str, shard: int, bucket: int, until_ms: int, *, limit: int = 1000
    ) -> list[TimerRow]:
        ps = await self._prepare()
        rows = await self.session.execute(
            ps["due"], (type_name, shard, bucket, until_ms, limit), profile=RAW_PROFILE
        )
        return [
            TimerRow(type_name, shard, bucket, r[0], r[1], r[2], r[3], *(v or "" for v in r[4:]))
            for r in rows
        ]

    async def cursor(self, type_name: str, shard: int) -> int | None:
        ps = await self._prepare()
        row = await self.session.select_one(
            ps["cursor_get"], (type_name, shard), profile=RAW_PROFILE
        )
        return None if row is None else row[0]

    async def advance(self, type_name: str, shard: int, bucket: int) -> None:
        ps = await self._prepare()
        await self.session.execute(ps["cursor_set"], (bucket, type_name, shard))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._own_session:
                await self.session.close()


def _key(r: TimerRow) -> tuple[Any, ...]:
    """A row's primary key, in the statements' order."""
    return (r.type_name, r.shard, r.bucket, r.due_ms, r.persistence_id, r.name, r.timer_id)
