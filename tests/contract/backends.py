"""Backend makers of the contract suite (imported by its conftest and tests)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from raysource.journal.api import Journal
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.memory import InMemoryJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.snapshots.api import SnapshotStore
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.snapshots.memory import InMemorySnapshotStore

# The Cassandra tag query only returns rows older than this (see journal.cassandra); kept
# small so the contract tests do not wait long.
TAG_DELAY = 0.4


@dataclass
class Backend:
    """Makes journals / snapshot stores of one implementation for one test."""

    name: str
    session: CassandraSession | None = None
    config: CassandraConfig | None = None
    tag_visibility_delay: float = 0.0
    _made: list[Any] = field(default_factory=list)

    def journal(self, *, fencing: bool = True, partition_size: int = 5000) -> Journal:
        if self.name == "memory":
            j: Journal = InMemoryJournal(fencing=fencing, max_group_size=partition_size)
        else:
            assert self.session is not None and self.config is not None
            cfg = self.config.with_(partition_size=partition_size, fencing=fencing)
            j = CassandraJournal(self.session, cfg)
        self._made.append(j)
        return j

    def snapshots(self) -> SnapshotStore:
        if self.name == "memory":
            return InMemorySnapshotStore()
        assert self.session is not None
        return CassandraSnapshotStore(self.session, self.config)

    @staticmethod
    def pid(prefix: str = "p") -> str:
        """A fresh persistence id (Cassandra tables are shared by the tests of a module)."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    async def wait_for_tags(self) -> None:
        if self.tag_visibility_delay:
            await asyncio.sleep(self.tag_visibility_delay)
