"""raysource.journal.cassandra: the Cassandra store — config, session, schema and the journal.

``config`` is light (no driver import); the other names load cassandra-driver on first access.
"""

from raysource.journal._lazy import lazy_getattr
from raysource.journal.cassandra.config import CassandraConfig

__all__ = ["CassandraConfig", "CassandraJournal", "CassandraSession", "create_schema",
           "schema_cql"]

_LAZY = {
    "CassandraJournal": "raysource.journal.cassandra.journal",
    "CassandraSession": "raysource.journal.cassandra.session",
    "create_schema": "raysource.journal.cassandra.schema",
    "schema_cql": "raysource.journal.cassandra.schema",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
