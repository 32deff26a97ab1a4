"""raysource journal: the Journal SPI, serialization, in-memory and Cassandra backends.

Only light modules are imported eagerly; the Cassandra pieces load cassandra-driver on access.
"""

from raysource.journal.api import (
    Journal,
    JournalCapabilities,
    StoredEvent,
    StoredSnapshot,
    TaggedEvent,
    TagOffset,
)
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization

__all__ = [
    "CassandraConfig",
    "CassandraJournal",
    "CassandraSession",
    "InMemoryJournal",
    "Journal",
    "JournalCapabilities",
    "Serialization",
    "StoredEvent",
    "StoredSnapshot",
    "TagOffset",
    "TaggedEvent",
    "create_schema",
    "schema_cql",
]

_LAZY = {
    "CassandraConfig": "raysource.journal.cassandra.config",
    "CassandraJournal": "raysource.journal.cassandra.journal",
    "CassandraSession": "raysource.journal.cassandra.session",
    "create_schema": "raysource.journal.cassandra.schema",
    "schema_cql": "raysource.journal.cassandra.schema",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'journal' has no attribute {name!r}")
