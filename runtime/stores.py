"""Which journal and snapshot store a host uses, as a picklable value, and how to open them.

A :class:`StoreSpec` travels to every Ray host actor; :func:`open_stores` builds the journal and
snapshot store *inside* that process (connections cannot be pickled). ``kind="memory"`` gives
each process its own in-memory stores (tests and benchmarks of the runtime alone: nothing
survives the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from raysource.journal.api import Journal
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType
from raysource.snapshots.api import SnapshotStore
from raysource.timers.api import TimerStore

__all__ = ["StoreSpec", "open_stores", "serialization_for", "timer_store_for"]


@dataclass(frozen=True)
class StoreSpec:
    """Picklable description of the stores.

    ``cassandra`` is required for ``kind="cassandra"``; ``create_schema`` creates keyspace and
    tables if missing (development only); ``max_payload_bytes`` is the serializer's limit
    (default: the Cassandra config's, else 1 MB).
    """

    kind: Literal["cassandra", "memory"] = "memory"
    cassandra: CassandraConfig | None = None
    create_schema: bool = False
    max_payload_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cassandra", "memory"):
            raise ConfigError(f"unknown store kind {self.kind!r}")
        if self.kind == "cassandra" and self.cassandra is None:
            raise ConfigError("StoreSpec(kind='cassandra') needs a CassandraConfig")

    @classmethod
    def for_cassandra(cls, config: CassandraConfig, *, create_schema: bool = False) -> StoreSpec:
        return cls("cassandra", config, create_schema)

    @property
    def payload_limit(self) -> int:
        if self.max_payload_bytes is not None:
            return self.max_payload_bytes
        return self.cassandra.max_payload_bytes if self.cassandra else 1_000_000


def serialization_for(
    aggregate_type: AggregateType[Any, Any, Any], spec: StoreSpec, journal: Journal | None = None
) -> Serialization:
    """A serializer with ``aggregate_type``'s classes registered (one per host). Personal
    fields use the key store beside the journal: on Cassandra the key table of its keyspace
    (sharing ``journal``'s session when given), in memory this process's keys."""
    keys = None
    if spec.kind == "cassandra":
        from raysource.journal.cassandra.keystore import key_ring, key_ring_beside

        assert spec.cassandra is not None
        keys = key_ring_beside(journal) or key_ring(spec.cassandra)
    ser = Serialization(max_payload_bytes=spec.payload_limit, keys=keys)
    aggregate_type.register_types(ser)
    return ser


def timer_store_for(spec: StoreSpec, journal: Journal) -> TimerStore:
    """The timer store beside ``journal`` (opened by :func:`open_stores`): on Cassandra it
    shares the journal's session; in memory it is this process's own (timers of a memory
    store fire only where that process runs a timer pump, e.g. the test kit)."""
    if spec.kind == "memory":
        from raysource.timers.memory import InMemoryTimerStore

        return InMemoryTimerStore()
    from raysource.timers.cassandra import CassandraTimerStore

    return CassandraTimerStore(journal.session, spec.cassandra)  # type: ignore[attr-defined]


async def open_stores(spec: StoreSpec) -> tuple[Journal, SnapshotStore]:
    """Build the journal and snapshot store in this process. For Cassandra, the blocking
    driver connect runs in the session's executor (never on the event loop). Close both with
    their ``close()``."""
    if spec.kind == "memory":
        from raysource.journal.memory import InMemoryJournal
        from raysource.snapshots.memory import InMemorySnapshotStore

        return InMemoryJournal(), InMemorySnapshotStore()

    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.journal.cassandra.session import CassandraSession
    from raysource.snapshots.cassandra import CassandraSnapshotStore

    config = spec.cassandra
    assert config is not None
    # one session (connection pool, executor) shared by both; the journal owns and closes it
    session = await CassandraSession.open(config, create_schema=spec.create_schema)
    try:
        journal = CassandraJournal(session, config, own_session=True)
        snapshots = CassandraSnapshotStore(session, config)
    except BaseException:
        await session.close()
        raise
    return journal, snapshots
