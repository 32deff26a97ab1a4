"""What the shipped contract suites need from a backend, and the two backends raysource has.

A third-party journal runs :class:`~raysource.testing.journal_contract.JournalContract` by
giving it an object with these four members (:class:`ContractBackend`); :class:`Backend` is
that object for the in-memory stores and for Cassandra (on a session you connected).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from raysource.journal.api import Journal
from raysource.journal.memory import InMemoryJournal
from raysource.snapshots.api import SnapshotStore
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.timers.api import TimerStore
from raysource.timers.memory import InMemoryTimerStore

__all__ = ["Backend", "ContractBackend"]


class ContractBackend(Protocol):
    """Makes fresh stores of one implementation for one contract test."""

    def journal(self, *, fencing: bool = True, partition_size: int = 5000) -> Journal:
        """A journal with the guard on or off, whose atomic groups may hold at most
        ``partition_size`` events (``max_group_size``)."""
        ...

    def snapshots(self) -> SnapshotStore:
        """A snapshot store."""
        ...

    def timers(self) -> TimerStore:
        """A timer store (for :mod:`raysource.testing.timer_contract`)."""
        ...

    def pid(self, prefix: str = "p") -> str:
        """A persistence id no other test uses (stores may be shared between tests)."""
        ...

    async def wait_for_tags(self) -> None:
        """Wait until tag rows written so far are visible to ``events_by_tag``."""
        ...


@dataclass
class Backend:
    """The in-memory stores (``Backend("memory")``) or the Cassandra ones on ``session`` with
    ``config`` (``Backend("cassandra", session, config, tag_visibility_delay=...)``)."""

    name: str
    session: Any = None
    config: Any = None
    tag_visibility_delay: float = 0.0
    property_examples: int | None = None
    #: the Cassandra journal's guard when ``journal(fencing=True)`` ("epoch" or "per-append";
    #: ``fencing=False`` is always "off")
    guard: str = "epoch"
    _made: list[Any] = field(default_factory=list)

    def journal(self, *, fencing: bool = True, partition_size: int = 5000) -> Journal:
        if self.name == "memory":
            j: Journal = InMemoryJournal(fencing=fencing, max_group_size=partition_size)
        else:
            from raysource.journal.cassandra.journal import CassandraJournal

            assert self.session is not None and self.config is not None
            cfg = self.config.with_(
                partition_size=partition_size,
                fencing=fencing,
                guard=self.guard if fencing else "off",
            )
            j = CassandraJournal(self.session, cfg)
        self._made.append(j)
        return j

    def snapshots(self) -> SnapshotStore:
        if self.name == "memory":
            return InMemorySnapshotStore()
        from raysource.snapshots.cassandra import CassandraSnapshotStore

        assert self.session is not None
        return CassandraSnapshotStore(self.session, self.config)

    def timers(self) -> TimerStore:
        if self.name == "memory":
            return InMemoryTimerStore()
        from raysource.timers.cassandra import CassandraTimerStore

        assert self.session is not None
        return CassandraTimerStore(self.session, self.config)

    @staticmethod
    def pid(prefix: str = "p") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    async def wait_for_tags(self) -> None:
        if self.tag_visibility_delay:
            await asyncio.sleep(self.tag_visibility_delay)
