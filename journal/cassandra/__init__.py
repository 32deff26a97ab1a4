"""raysource.journal.cassandra: the Cassandra store — config, session, schema and the journal.

``config`` is light (no driver import); the other names load cassandra-driver on first access.
"""

from raysource.journal.cassandra.config import CassandraConfig

__all__ = ["CassandraConfig", "CassandraJournal", "CassandraSession", "create_schema",
           "schema_cql"]

_LAZY = {
    "CassandraJournal": "raysource.journal.cassandra.journal",
    "CassandraSession": "raysource.journal.cassandra.session",
    "create_schema": "raysource.journal.cassandra.schema",
    "schema_cql": "raysource.journal.cassandra.schema",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raysource.journal.cassandra' has no attribute {name!r}")
