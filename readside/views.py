"""Effectively-once view writers: exactly-once view results from at-least-once delivery.

:class:`EffectivelyOnceView` keeps, per view, a high-water mark table
``<view>_watermarks (persistence_id PRIMARY KEY, sequence_nr)``: the last sequence number of
each persistence id applied to the view. ``apply(envelope, statements)``:

1. reads the id's mark (Cassandra once per id and worker activation, then a local cache);
2. if ``envelope.sequence_nr <= mark`` the delivery is a redelivery: nothing is written;
3. otherwise runs the view's statements **and** the new mark in one LOGGED batch, so both
   land or neither does (Cassandra's batch log replays a half-applied logged batch).

Assumption (the read-modify-write is not a compare-and-set): at most one writer applies a given
persistence id at a time. Projection workers give that: a persistence id belongs to exactly one
slice and a slice to one named Ray actor. A killed worker's last batch, already sent, lands in
milliseconds, long before its replacement (hundreds of ms to start) reads the mark.

Events older than the mark are ignored, so per-id order must be the journal's order (it is, for
tag streams and by-id streams). With ``audit=True`` every applied delivery is also recorded in
``<view>_applied (persistence_id, sequence_nr, applied timeuuid)`` inside the same batch, which
lets tests count applications exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType, PreparedStatement

from raysource.journal.cassandra.config import validate_identifier
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.readside.projections import EventEnvelope

__all__ = ["EffectivelyOnceView", "Mutation"]

Mutation = tuple[str | PreparedStatement, Sequence[Any]]


class EffectivelyOnceView:
    """Idempotent writes of one view (see the module docstring). ``keyspace.view`` names the
    view; its bookkeeping tables are ``<view>_watermarks`` (and ``<view>_applied``)."""

    def __init__(self, session: CassandraSession, keyspace: str, view: str, *,
                 audit: bool = False) -> None:
        self.session = session
        self.keyspace = validate_identifier(keyspace, "keyspace")
        self.view = validate_identifier(view, "view name")
        self.audit = audit
        self.watermarks_table = f"{self.keyspace}.{view}_watermarks"
        self.applied_table = f"{self.keyspace}.{view}_applied"
        self._marks: dict[str, int] = {}
        self.applied = 0
        self.ignored = 0

    async def create_tables(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.watermarks_table} "
            "(persistence_id text PRIMARY KEY, sequence_nr bigint)", prepare=False, timeout=60.0)
        if self.audit:
            await self.session.execute(
                f"CREATE TABLE IF NOT EXISTS {self.applied_table} (persistence_id text, "
                "sequence_nr bigint, applied timeuuid, "
                "PRIMARY KEY ((persistence_id), sequence_nr, applied))",
                prepare=False, timeout=60.0)

    async def watermark(self, persistence_id: str) -> int:
        """The last applied sequence number of ``persistence_id`` (0 if none)."""
        mark = self._marks.get(persistence_id)
        if mark is None:
            row = await self.session.select_one(
                f"SELECT sequence_nr FROM {self.watermarks_table} WHERE persistence_id = ?",
                (persistence_id,), profile=RAW_PROFILE)
            mark = row[0] if row and row[0] is not None else 0
            self._marks[persistence_id] = mark
        return mark

    async def apply(self, envelope: EventEnvelope, mutations: Sequence[Mutation]) -> bool:
        """Apply ``mutations`` (CQL text or prepared statements with parameters) for
        ``envelope`` unless it was applied already. True if written, False if ignored."""
        pid, seq = envelope.persistence_id, envelope.sequence_nr
        if seq <= await self.watermark(pid):
            self.ignored += 1
            return False
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        for stmt, params in mutations:
            ps = stmt if isinstance(stmt, PreparedStatement) else await self.session.prepare(stmt)
            batch.add(ps, tuple(params))
        batch.add(await self.session.prepare(
            f"UPDATE {self.watermarks_table} SET sequence_nr = ? WHERE persistence_id = ?"),
            (seq, pid))
        if self.audit:
            batch.add(await self.session.prepare(
                f"INSERT INTO {self.applied_table} (persistence_id, sequence_nr, applied) "
                "VALUES (?, ?, now())"), (pid, seq))
        try:
            await self.session.execute_batch(batch)
        except BaseException:
            # outcome unknown (a logged batch may still land): re-read the mark next time
            self._marks.pop(pid, None)
            raise
        self._marks[pid] = seq
        self.applied += 1
        return True

    async def clear(self) -> None:
        """Forget every mark (and audit row): for rebuilding the view from the start. The
        caller truncates the view's own tables."""
        await self.session.execute(f"TRUNCATE {self.watermarks_table}", prepare=False,
                                   timeout=60.0)
        if self.audit:
            await self.session.execute(f"TRUNCATE {self.applied_table}", prepare=False,
                                       timeout=60.0)
        self._marks.clear()

    def forget_cache(self) -> None:
        """Drop the cached marks (they are re-read from Cassandra on next use)."""
        self._marks.clear()
