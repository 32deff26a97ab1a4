"""The Cassandra snapshot store: table ``snapshots`` partitioned by persistence id, clustered by
sequence number descending (so "newest at or below n" is a ``LIMIT 1`` read)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from raysource.journal.api import StoredSnapshot
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import from_us, to_us
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.snapshots.api import SnapshotStore

__all__ = ["CassandraSnapshotStore"]


class CassandraSnapshotStore(SnapshotStore):
    """A :class:`~raysource.snapshots.api.SnapshotStore` on Cassandra (prepared statements only).

    ``keep_newest`` reads the sequence numbers of one persistence id (bounded by the snapshot
    policy's K plus what accumulated since) and deletes the older rows one by one.
    """

    def __init__(
        self,
        session: CassandraSession,
        config: CassandraConfig | None = None,
        *,
        own_session: bool = False,
    ) -> None:
        self.session = session
        self.config = config or session.config
        self._own_session = own_session
        self._ps: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def connect(
        cls, config: CassandraConfig, *, create_schema: bool = False
    ) -> CassandraSnapshotStore:
        session = await CassandraSession.open(config, create_schema=create_schema)
        try:
            store = cls(session, config, own_session=True)
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
                c = self.config
                t = f"{c.keyspace}.{c.snapshots_table}"
                w, r = c.write_consistency, c.read_consistency
                p = self.session.prepare
                self._ps = {
                    "save": await p(
                        f"INSERT INTO {t} (persistence_id, sequence_nr, timestamp_us, "
                        f"ser_id, manifest, payload) VALUES (?,?,?,?,?,?)",
                        consistency_level=w,
                    ),
                    "load": await p(
                        f"SELECT sequence_nr, timestamp_us, ser_id, manifest, payload "
                        f"FROM {t} WHERE persistence_id = ? AND sequence_nr <= ? "
                        f"LIMIT 1",
                        consistency_level=r,
                    ),
                    "seqs": await p(
                        f"SELECT sequence_nr FROM {t} WHERE persistence_id = ?", consistency_level=r
                    ),
                    "delete": await p(
                        f"DELETE FROM {t} WHERE persistence_id = ? AND sequence_nr = ?",
                        consistency_level=w,
                    ),
                }
        return self._ps

    async def save(self, snapshot: StoredSnapshot) -> None:
        ps = await self._prepare()
        if not snapshot.persistence_id or snapshot.sequence_nr < 0:
            raise ValueError(
                f"invalid snapshot key {snapshot.persistence_id!r}/{snapshot.sequence_nr}"
            )
        await self.session.execute(
            ps["save"],
            (
                snapshot.persistence_id,
                snapshot.sequence_nr,
                to_us(snapshot.timestamp),
                snapshot.serializer_id,
                snapshot.manifest,
                bytes(snapshot.payload),
            ),
        )

    async def load(
        self, persistence_id: str, max_sequence_nr: int = sys.maxsize
    ) -> StoredSnapshot | None:
        ps = await self._prepare()
        row = await self.session.select_one(
            ps["load"], (persistence_id, max_sequence_nr), profile=RAW_PROFILE
        )
        if row is None:
            return None
        seq, ts, sid, manifest, payload = row
        return StoredSnapshot(persistence_id, seq, payload, manifest, sid, from_us(ts))

    async def keep_newest(self, persistence_id: str, keep: int) -> None:
        ps = await self._prepare()
        seqs = [
            r[0]
            async for r in self.session.stream(ps["seqs"], (persistence_id,), profile=RAW_PROFILE)
        ]
        old = seqs[max(keep, 0) :]  # clustering order is DESC: newest first
        await asyncio.gather(
            *(self.session.execute(ps["delete"], (persistence_id, s)) for s in old)
        )

    async def delete(self, persistence_id: str, sequence_nr: int) -> None:
        ps = await self._prepare()
        await self.session.execute(ps["delete"], (persistence_id, sequence_nr))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._own_session:
                await self.session.close()
