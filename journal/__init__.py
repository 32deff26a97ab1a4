"""raysource.journal: the Journal SPI, serialization, in-memory and Cassandra backends.

Only light modules are imported eagerly; the Cassandra pieces load cassandra-driver on access.
"""

from typing import TYPE_CHECKING

from raysource.journal._lazy import lazy_getattr
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

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from raysource.journal.cassandra import (
        CassandraConfig,
        CassandraJournal,
        CassandraSession,
        create_schema,
        schema_cql,
    )

_LAZY = {
    name: "raysource.journal.cassandra"
    for name in (
        "CassandraConfig",
        "CassandraJournal",
        "CassandraSession",
        "create_schema",
        "schema_cql",
    )
}

__getattr__ = lazy_getattr(__name__, _LAZY)
