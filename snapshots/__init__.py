"""raysource snapshots: the SnapshotStore SPI, in-memory and Cassandra stores."""

from raysource.snapshots.api import SnapshotStore, StoredSnapshot
from raysource.snapshots.memory import InMemorySnapshotStore

__all__ = ["CassandraSnapshotStore", "InMemorySnapshotStore", "SnapshotStore", "StoredSnapshot"]


def __getattr__(name: str):
    if name == "CassandraSnapshotStore":
        from raysource.snapshots.cassandra import CassandraSnapshotStore

        return CassandraSnapshotStore
    raise AttributeError(f"module 'snapshots' has no attribute {name!r}")
