"""raysource journal: the Journal SPI, serialization, in-memory and Cassandra backends.

Only light modules are imported eagerly; the Cassandra pieces load cassandra-driver on access.
"""

from journal.api import (
    Journal,
    JournalCapabilities,
    StoredEvent,
    StoredSnapshot,
    TaggedEvent,
    TagOffset,
)
from journal.memory import InMemoryJournal
from journal.serialization import Serialization

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
    "CassandraConfig": "journal.config",
    "CassandraJournal": "journal.cassandra",
    "CassandraSession": "journal.session",
    "create_schema": "journal.schema",
    "schema_cql": "journal.schema",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'journal' has no attribute {name!r}")
