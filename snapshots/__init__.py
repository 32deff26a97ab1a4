"""raysource snapshots: the SnapshotStore SPI, in-memory and Cassandra stores."""

from snapshots.api import SnapshotStore, StoredSnapshot
from snapshots.memory import InMemorySnapshotStore

__all__ = ["CassandraSnapshotStore", "InMemorySnapshotStore", "SnapshotStore", "StoredSnapshot"]


def __getattr__(name: str):
    if name == "CassandraSnapshotStore":
        from snapshots.cassandra import CassandraSnapshotStore

        return CassandraSnapshotStore
    raise AttributeError(f"module 'snapshots' has no attribute {name!r}")
