"""raysource.journal.cassandra: the Cassandra store — config, session, schema and the journal.

``config`` is light (no driver import); the other names load cassandra-driver on first access.
"""

from typing import TYPE_CHECKING

from raysource.journal._lazy import lazy_getattr
from raysource.journal.cassandra.config import CassandraConfig

__all__ = ["CassandraConfig", "CassandraJournal", "CassandraSession", "create_schema", "schema_cql"]

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.journal.cassandra.schema import create_schema, schema_cql
    from raysource.journal.cassandra.session import CassandraSession

_LAZY = {
    "CassandraJournal": "raysource.journal.cassandra.journal",
    "CassandraSession": "raysource.journal.cassandra.session",
    "create_schema": "raysource.journal.cassandra.schema",
    "schema_cql": "raysource.journal.cassandra.schema",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
