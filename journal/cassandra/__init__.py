"""raysource.journal.cassandra: the Cassandra store — config, session, schema and the journal.

Importing this package loads cassandra-driver.
"""

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.schema import create_schema, schema_cql
from raysource.journal.cassandra.session import CassandraSession

__all__ = ["CassandraConfig", "CassandraJournal", "CassandraSession", "create_schema",
           "schema_cql"]
