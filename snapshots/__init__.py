"""raysource snapshots: the SnapshotStore SPI, in-memory and Cassandra stores."""

from typing import TYPE_CHECKING

from raysource.journal._lazy import lazy_getattr
from raysource.snapshots.api import SnapshotStore, StoredSnapshot
from raysource.snapshots.memory import InMemorySnapshotStore

__all__ = ["CassandraSnapshotStore", "InMemorySnapshotStore", "SnapshotStore", "StoredSnapshot"]

if TYPE_CHECKING:  # the lazy name below, for type checkers and IDEs
    from raysource.snapshots.cassandra import CassandraSnapshotStore

__getattr__ = lazy_getattr(__name__, {"CassandraSnapshotStore": "raysource.snapshots.cassandra"})
