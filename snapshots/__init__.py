"""raysource snapshots: the SnapshotStore SPI, in-memory and Cassandra stores."""

from raysource.journal._lazy import lazy_getattr
from raysource.snapshots.api import SnapshotStore, StoredSnapshot
from raysource.snapshots.memory import InMemorySnapshotStore

__all__ = ["CassandraSnapshotStore", "InMemorySnapshotStore", "SnapshotStore", "StoredSnapshot"]

__getattr__ = lazy_getattr(__name__, {"CassandraSnapshotStore": "raysource.snapshots.cassandra"})
