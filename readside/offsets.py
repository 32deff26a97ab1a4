"""Where a projection keeps its progress: the offset store SPI and its two implementations.

Per (projection, worker) an :class:`OffsetStore` keeps one row: the offset everything up to
which is handled, the *desired* state (what an operator asked for: running/paused/stopped),
the state the worker last reported and its last error. Columns are written separately, so
writers of different columns (the control API and the worker) never overwrite each other.

Per (projection, persistence id) it keeps the *parked* aggregate streams: a poison event (its
handler failed every retry) parks only its aggregate's stream; the record names the first
event not applied (``sequence_nr``), the worker and the error. Later events of that aggregate
are passed over by the tag stream (the offset moves on for everyone else) and are re-read from
the journal by persistence id when the stream is retried or the poison event skipped.

* :class:`InMemoryOffsetStore` — a dict; lives as long as the object (tests, the in-memory
  journal, a single process).
* :class:`CassandraOffsetStore` — the tables ``projection_offsets`` and ``projection_parked``
  of the production schema (CQL: :mod:`raysource.journal.cassandra.readside_statements`).

Every method is a coroutine; a Cassandra outage raises ``JournalUnavailableError``.
"""

from __future__ import annotations

import abc
import builtins
import time
from dataclasses import dataclass, replace
from typing import Any

from raysource.journal.api import TagOffset

__all__ = [
    "CassandraOffsetStore",
    "InMemoryOffsetStore",
    "OffsetStore",
    "ParkedStream",
    "StoredProjectionRow",
]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class StoredProjectionRow:
    """One worker's row: its offset, the state it should be in (``desired``:
    running/paused/stopped), the state it reported, and its last error."""

    projection: str
    worker: str
    offset: TagOffset | None
    desired: str
    state: str
    error: str
    updated_us: int


@dataclass(frozen=True)
class ParkedStream:
    """One parked aggregate stream: events of ``persistence_id`` from ``sequence_nr`` on are
    not applied until it is retried (or that event skipped)."""

    projection: str
    persistence_id: str
    worker: str
    sequence_nr: int
    error: str
    parked_us: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "persistence_id": self.persistence_id,
            "worker": self.worker,
            "sequence_nr": self.sequence_nr,
            "error": self.error,
            "parked_us": self.parked_us,
        }


class OffsetStore(abc.ABC):
    """The SPI (see the module docstring)."""

    async def create(self) -> None:
        """Create the tables if missing (idempotent)."""

    @abc.abstractmethod
    async def list(self, projection: str) -> list[StoredProjectionRow]:
        """Every worker row of ``projection``, by worker key."""

    async def load(self, projection: str, worker: str) -> StoredProjectionRow | None:
        rows = [r for r in await self.list(projection) if r.worker == worker]
        return rows[0] if rows else None

    @abc.abstractmethod
    async def save_offset(self, projection: str, worker: str, offset: TagOffset | None) -> None:
        """Store ``offset`` (None: the start)."""

    @abc.abstractmethod
    async def set_desired(self, projection: str, worker: str, desired: str) -> None: ...

    @abc.abstractmethod
    async def set_state(self, projection: str, worker: str, state: str, error: str) -> None: ...

    @abc.abstractmethod
    async def park(self, parked: ParkedStream) -> None:
        """Record (or overwrite) a parked stream."""

    @abc.abstractmethod
    async def unpark(self, projection: str, persistence_id: str) -> None: ...

    @abc.abstractmethod
    async def parked(self, projection: str) -> builtins.list[ParkedStream]:
        """Every parked stream of ``projection``, by persistence id."""


class InMemoryOffsetStore(OffsetStore):
    """A dict-backed :class:`OffsetStore` (share one object between workers of a process)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], StoredProjectionRow] = {}
        self._parked: dict[tuple[str, str], ParkedStream] = {}

    def _row(self, projection: str, worker: str) -> StoredProjectionRow:
        return self._rows.get((projection, worker)) or StoredProjectionRow(
            projection, worker, None, "", "", "", 0
        )

    async def list(self, projection: str) -> list[StoredProjectionRow]:
        return [r for (p, _), r in sorted(self._rows.items()) if p == projection]

    async def save_offset(self, projection: str, worker: str, offset: TagOffset | None) -> None:
        off = None if offset is None or offset == TagOffset.start() else offset
        self._rows[(projection, worker)] = replace(
            self._row(projection, worker), offset=off, updated_us=now_us()
        )

    async def set_desired(self, projection: str, worker: str, desired: str) -> None:
        self._rows[(projection, worker)] = replace(self._row(projection, worker), desired=desired)

    async def set_state(self, projection: str, worker: str, state: str, error: str) -> None:
        self._rows[(projection, worker)] = replace(
            self._row(projection, worker), state=state, error=error, updated_us=now_us()
        )

    async def park(self, parked: ParkedStream) -> None:
        self._parked[(parked.projection, parked.persistence_id)] = parked

    async def unpark(self, projection: str, persistence_id: str) -> None:
        self._parked.pop((projection, persistence_id), None)

    async def parked(self, projection: str) -> builtins.list[ParkedStream]:
        return [p for (name, _), p in sorted(self._parked.items()) if name == projection]


class CassandraOffsetStore(OffsetStore):
    """``<keyspace>.projection_offsets`` and ``<keyspace>.projection_parked`` (created on
    demand by :meth:`create`; also in the production schema)."""

    def __init__(self, session: Any, keyspace: str) -> None:
        from raysource.journal.cassandra.readside_statements import OffsetStatements

        self.session = session
        self.cql = OffsetStatements(keyspace)

    async def create(self) -> None:
        for stmt in self.cql.create:
            await self.session.execute(stmt, prepare=False, timeout=60.0)

    async def list(self, projection: str) -> list[StoredProjectionRow]:
        return await self._select(self.cql.select, (projection,))

    async def load(self, projection: str, worker: str) -> StoredProjectionRow | None:
        rows = await self._select(self.cql.select_worker, (projection, worker))
        return rows[0] if rows else None

    async def _select(
        self, cql: str, params: tuple[Any, ...]
    ) -> builtins.list[StoredProjectionRow]:
        from raysource.journal.cassandra.session import RAW_PROFILE

        out = []
        for r in await self.session.select_all(cql, params, profile=RAW_PROFILE):
            off = (
                None
                if r[2] is None or r[2] == 0 and not r[3]
                else TagOffset(r[2], r[3] or "", r[4] or 0)
            )
            out.append(
                StoredProjectionRow(r[0], r[1], off, r[5] or "", r[6] or "", r[7] or "", r[8] or 0)
            )
        return out

    async def save_offset(self, projection: str, worker: str, offset: TagOffset | None) -> None:
        o = offset or TagOffset.start()
        await self.session.execute(
            self.cql.save_offset,
            (o.timestamp_us, o.persistence_id, o.sequence_nr, now_us(), projection, worker),
        )

    async def set_desired(self, projection: str, worker: str, desired: str) -> None:
        await self.session.execute(self.cql.set_desired, (desired, projection, worker))

    async def set_state(self, projection: str, worker: str, state: str, error: str) -> None:
        await self.session.execute(self.cql.set_state, (state, error, now_us(), projection, worker))

    async def park(self, parked: ParkedStream) -> None:
        await self.session.execute(
            self.cql.park,
            (
                parked.projection,
                parked.persistence_id,
                parked.worker,
                parked.sequence_nr,
                parked.error,
                parked.parked_us,
            ),
        )

    async def unpark(self, projection: str, persistence_id: str) -> None:
        await self.session.execute(self.cql.unpark, (projection, persistence_id))

    async def parked(self, projection: str) -> builtins.list[ParkedStream]:
        from raysource.journal.cassandra.session import RAW_PROFILE

        rows = await self.session.select_all(self.cql.parked, (projection,), profile=RAW_PROFILE)
        return [
            ParkedStream(projection, r[0], r[1] or "", r[2] or 0, r[3] or "", r[4] or 0)
            for r in rows
        ]
