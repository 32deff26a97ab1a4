"""Effectively-once view writers: exactly-once view results from at-least-once delivery.

:class:`EffectivelyOnceView` keeps, per view, a high-water mark table
``<view>_watermarks (persistence_id PRIMARY KEY, sequence_nr)``: the last sequence number of
each persistence id applied to the view. ``apply_batch([(envelope, mutations), ...])``:

1. reads the marks of ids it does not know yet (concurrently; then a local cache);
2. drops every delivery at or below its id's mark (a redelivery: nothing is written);
3. writes the rest in **logged batches**, each holding the view statements of its events
   **and** the new mark of each of their ids, so the statements and the marks land together
   or not at all (Cassandra's batch log replays a half-applied logged batch).

Statements of one batch share one write timestamp, so two statements in one batch that write
the same row would not apply in order (a delete beats an insert, say). The writer therefore
never puts two events with the same *conflict key* in one batch. The default key is the
persistence id (one event per aggregate per batch: safe for any view); a view passes
``conflict_key`` (envelope -> hashable) naming what an event writes (the example view: the
show and seat), so events of one aggregate that write different rows share a batch. Events
are layered in delivery order: an event goes into the first layer after the last one holding
its conflict key, and never below its aggregate's previous event; layers are written in
order, a layer's batches (at most ``max_batch`` events and about ``max_batch_bytes`` of bound
values; an aggregate's events of one layer stay in one batch) concurrently. Each batch raises
the marks of its aggregates to their last event in it, so a crash between batches leaves every
aggregate's mark at a prefix of its events: a redelivery applies exactly the rest.

Batches are as large as those bounds allow: on Cassandra a logged batch's cost is mostly per
batch and per partition, not per statement (measured on one node, issue 30: a view event cost
about 3x the server CPU in batches of 100 events than in batches of 500, over 50 view
partitions). ``max_batch_bytes`` (32 KiB) stays below a stock node's
``batch_size_fail_threshold`` (50 KiB); a stock node logs a warning above 5 KiB (the local
node of ``raysource cassandra`` raises both thresholds). An event's statements are bound as it
is layered; one that cannot be bound (a statement Cassandra refuses) fails its batch when
that batch is written, so the layers before it land.

Assumption (the read-modify-write is not a compare-and-set): at most one writer applies a given
persistence id at a time. Projection workers give that: a persistence id belongs to exactly one
slice and a slice to one named Ray actor. A killed worker's last batch, already sent, lands in
milliseconds, long before its replacement (hundreds of ms to start) reads the mark.

Events older than the mark are ignored, so per-id order must be the journal's order (it is, for
tag streams and by-id streams). With ``audit=True`` every applied delivery is also recorded in
``<view>_applied (persistence_id, sequence_nr, applied timeuuid)`` inside the same batch, which
lets tests and ``raysource projection verify`` count applications exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement

from raysource.journal.cassandra.readside_statements import ViewStatements
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import ConfigError
from raysource.readside.projections import EventEnvelope

__all__ = ["EffectivelyOnceView", "Mutation"]

Mutation = tuple[str | PreparedStatement, Sequence[Any]]

# A batch's size in bytes is estimated as its bound values plus this much a statement (below
# Cassandra's own measure of a mutation, which counts cells' overhead too; see max_batch_bytes)
_STATEMENT_BYTES = 16


@dataclass(slots=True)
class _Group:
    """One persistence id's events in one layer: their bound statements, written in one batch
    with the id's new mark (``last``); ``error``: one of them could not be bound."""

    pid: str
    events: int = 0
    size: int = 0
    last: int = 0
    bound: list[BoundStatement] = field(default_factory=list)
    error: BaseException | None = None

    def add(
        self, seq: int, bound: list[BoundStatement], size: int, error: BaseException | None
    ) -> None:
        self.events += 1
        self.size += size
        self.last = seq
        self.bound += bound
        if error is not None and self.error is None:
            self.error = error


class EffectivelyOnceView:
    """Idempotent writes of one view (see the module docstring). ``keyspace.view`` names the
    view; its bookkeeping tables are ``<view>_watermarks`` (and ``<view>_applied``)."""

    def __init__(
        self,
        session: CassandraSession,
        keyspace: str,
        view: str,
        *,
        audit: bool = False,
        max_batch: int = 500,
        max_batch_bytes: int = 32 * 1024,
        conflict_key: Callable[[EventEnvelope], Hashable] | None = None,
    ) -> None:
        if max_batch < 1 or max_batch_bytes < 1:
            raise ConfigError("max_batch and max_batch_bytes must be >= 1")
        self.session = session
        self.cql = ViewStatements(keyspace, view)
        self.view = view
        self.audit = audit
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.conflict_key = conflict_key
        self.watermarks_table = self.cql.watermarks_table
        self.applied_table = self.cql.applied_table
        self._marks: dict[str, int] = {}
        self._prepared: dict[str, PreparedStatement] = {}  # CQL text of mutations, prepared
        self.applied = 0
        self.ignored = 0
        self.batches = 0

    async def create_tables(self) -> None:
        await self.session.execute(self.cql.create_watermarks, prepare=False, timeout=60.0)
        if self.audit:
            await self.session.execute(self.cql.create_applied, prepare=False, timeout=60.0)

    async def watermark(self, persistence_id: str) -> int:
        """The last applied sequence number of ``persistence_id`` (0 if none)."""
        mark = self._marks.get(persistence_id)
        if mark is None:
            row = await self.session.select_one(
                self.cql.select_mark, (persistence_id,), profile=RAW_PROFILE
            )
            mark = row[0] if row and row[0] is not None else 0
            self._marks.setdefault(persistence_id, mark)
        return self._marks[persistence_id]

    async def apply(self, envelope: EventEnvelope, mutations: Sequence[Mutation]) -> bool:
        """Apply ``mutations`` for ``envelope`` unless it was applied already. True if
        written, False if ignored."""
        return await self.apply_batch([(envelope, mutations)]) == 1

    async def apply_batch(self, items: Iterable[tuple[EventEnvelope, Sequence[Mutation]]]) -> int:
        """Apply each ``(envelope, mutations)`` (CQL text or prepared statements with
        parameters) unless its event was applied already; ``items`` in delivery order (per
        persistence id ascending). Returns how many were written. On an error some batches
        may have landed (their marks say which); delivering the same items again is safe."""
        items = list(items)
        unknown = {env.persistence_id for env, _ in items} - self._marks.keys()
        if unknown:
            await asyncio.gather(*(self.watermark(pid) for pid in unknown))
        audit = await self.session.prepare(self.cql.audit) if self.audit else None
        layers: list[dict[str, _Group]] = []
        pid_layer: dict[str, int] = {}  # per id: its current layer (never decreases)
        key_layer: dict[Any, int] = {}  # per conflict key: the last layer that wrote it
        running: dict[str, int] = {}  # per id of this call: its last event layered
        for env, mutations in items:
            pid, seq = env.persistence_id, env.sequence_nr
            last = running.get(pid)
            if seq <= (self._marks[pid] if last is None else last):
                self.ignored += 1
                continue
            running[pid] = seq
            bound, size, error = await self._bind(env, mutations, audit)
            key = pid if self.conflict_key is None else self.conflict_key(env)
            layer = max(pid_layer.get(pid, 0), key_layer.get(key, -1) + 1)
            if layer < len(layers):
                group = layers[layer].get(pid)
                if group is not None and (
                    group.events >= self.max_batch or group.size + size > self.max_batch_bytes
                ):
                    layer += 1  # a full group: the id's later events go one layer up
            pid_layer[pid] = key_layer[key] = layer
            while len(layers) <= layer:
                layers.append({})
            group = layers[layer].get(pid)
            if group is None:
                group = layers[layer][pid] = _Group(pid)
            group.add(seq, bound, size, error)
        set_mark = await self.session.prepare(self.cql.set_mark)
        written = 0
        for by_pid in layers:
            # an id's events of one layer stay in one batch (its mark is their last one)
            chunks: list[list[_Group]] = [[]]
            events = size = 0
            for group in by_pid.values():
                if chunks[-1] and (
                    events + group.events > self.max_batch
                    or size + group.size > self.max_batch_bytes
                ):
                    chunks.append([])
                    events = size = 0
                chunks[-1].append(group)
                events, size = events + group.events, size + group.size
            results = await asyncio.gather(
                *(self._write(c, set_mark) for c in chunks), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    raise r
                written += r
        return written

    async def _bind(
        self, env: EventEnvelope, mutations: Sequence[Mutation], audit: PreparedStatement | None
    ) -> tuple[list[BoundStatement], int, BaseException | None]:
        """``env``'s statements bound (and its audit row), their size in bytes (bound values
        plus a few bytes a statement), and the error that kept them from being bound (its
        batch then fails when written, after the layers before it landed)."""
        bound: list[BoundStatement] = []
        prepared = self._prepared
        try:
            for stmt, params in mutations:
                if isinstance(stmt, PreparedStatement):
                    bound.append(stmt.bind(params))
                    continue
                ps = prepared.get(stmt)
                if ps is None:  # CQL text: prepared once per view
                    ps = prepared[stmt] = await self.session.prepare(stmt)
                bound.append(ps.bind(params))
            if audit is not None:
                bound.append(audit.bind((env.persistence_id, env.sequence_nr)))
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a statement Cassandra refuses, parameters that do not bind
            return [], 0, exc
        size = _STATEMENT_BYTES * len(bound)
        for b in bound:
            try:
                size += sum(map(len, b.values))
            except TypeError:  # a null or unset value among them
                size += sum(len(v) for v in b.values if isinstance(v, bytes))
        return bound, size, None

    async def _write(self, chunk: list[_Group], set_mark: PreparedStatement) -> int:
        """One logged batch: the statements of ``chunk``'s groups and their ids' new marks."""
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        events = 0
        for group in chunk:
            if group.error is not None:
                raise group.error
            for b in group.bound:
                batch.add(b)
            events += group.events
        for group in chunk:
            batch.add(set_mark, (group.last, group.pid))
        try:
            await self.session.execute_batch(batch)
        except BaseException:
            # outcome unknown (a logged batch may still land): re-read the marks next time
            for group in chunk:
                self._marks.pop(group.pid, None)
            raise
        for group in chunk:
            self._marks[group.pid] = max(group.last, self._marks.get(group.pid, 0))
        self.applied += events
        self.batches += 1
        return events

    async def stored_watermarks(self) -> dict[str, int]:
        """Every stored mark (a full table read: for verification, not the hot path)."""
        rows = await self.session.select_all(self.cql.select_all_marks, profile=RAW_PROFILE)
        return {r[0]: r[1] or 0 for r in rows}

    async def applied_counts(self) -> dict[tuple[str, int], int]:
        """(persistence id, sequence number) -> how many times it was applied (``audit``
        views only; a full table read)."""
        counts: dict[tuple[str, int], int] = {}
        for r in await self.session.select_all(self.cql.select_applied, profile=RAW_PROFILE):
            counts[(r[0], r[1])] = counts.get((r[0], r[1]), 0) + 1
        return counts

    async def clear(self) -> None:
        """Forget every mark (and audit row): for rebuilding the view from the start. The
        caller truncates the view's own tables."""
        await self.session.execute(self.cql.truncate_watermarks, prepare=False, timeout=60.0)
        if self.audit:
            await self.session.execute(self.cql.truncate_applied, prepare=False, timeout=60.0)
        self._marks.clear()

    def forget_cache(self) -> None:
        """Drop the cached marks (they are re-read from Cassandra on next use)."""
        self._marks.clear()
