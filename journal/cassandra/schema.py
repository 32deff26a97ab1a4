"""The CQL schema of the journal, tag views and snapshot store.

``schema_cql(config)`` is the text operators run (``raysource schema`` prints it;
``journal/schema.cql`` is the same text for the default config). ``create_schema`` creates it
on demand for development (``IF NOT EXISTS``). Names come from a validated
:class:`~raysource.journal.cassandra.config.CassandraConfig`, so interpolating them is safe.

Tables:

* ``messages_v2`` — the events. Partition ``(persistence_id, partition_nr)``, clustering
  ``(sequence_nr, epoch)``: rows of two activations never share a key, so no write ever
  overwrites another activation's event (``writer_epoch`` repeats the epoch as a value). Each
  atomic group lives in one partition (see ``raysource.journal.cassandra.journal``).
  ``timestamp_us`` keeps the event timestamp at microsecond precision. (The table of earlier
  versions, ``messages``, keyed without the epoch, is converted by ``raysource schema
  migrate``: :mod:`raysource.journal.cassandra.migrate`.)
* ``writer_fence`` — per persistence id the current epoch and its owner. Written ONLY by
  lightweight transactions (see ``raysource.journal.cassandra.epochs``).
* ``writer_epochs`` — one record per activation (epoch): where its segment starts and the chain
  of segments that make up the valid log; written once, by its owner.
* ``metadata`` — one row per persistence id: the logical ``deleted_to`` mark and a
  ``partition_hint`` (a lower bound of the newest partition, a scan start for
  ``highest_sequence_nr``).
* ``tag_views`` — one row per (tag, event): partition ``(tag, bucket)`` with ``bucket`` an hour
  of the tag-write clock, clustering ``(timestamp_us, persistence_id, sequence_nr)`` (the tag
  offset). Rows carry the whole event so a tag query needs no second lookup.
* ``tag_metadata`` — per tag the oldest bucket ever written (where a query from the start begins).
* ``snapshots`` — partition ``persistence_id``, clustering ``sequence_nr DESC``.
* ``retention_progress`` — the retention cleaner's progress (its CQL:
  ``raysource.journal.cassandra.retention_statements``).
* ``projection_offsets``, ``projection_parked`` — the read side's offsets and parked aggregate
  streams (their CQL: ``raysource.journal.cassandra.readside_statements``).
* ``subject_keys``, ``subject_forget_signals`` — the keys of personal data per data subject
  and the views told of a forget (their CQL: ``raysource.journal.cassandra.keystore_statements``).

Columns added after a table's first release (:data:`ADDED_COLUMNS`, e.g. the trace context of
``timer_index``) are in the ``CREATE TABLE`` text; :func:`create_schema` also adds them to an
older keyspace's table (``ALTER TABLE ... ADD``), and :func:`missing_columns` names those
still missing (``raysource doctor``'s schema line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.keystore_statements import keystore_schema
from raysource.journal.cassandra.readside_statements import readside_schema
from raysource.journal.cassandra.retention_statements import retention_schema
from raysource.journal.cassandra.timer_statements import TIMER_ADDED_COLUMNS, timer_schema

if TYPE_CHECKING:
    from raysource.journal.cassandra.session import CassandraSession

__all__ = ["ADDED_COLUMNS", "create_schema", "missing_columns", "schema_cql", "schema_statements"]

# (table, column, CQL type) added to a table after its first release
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = TIMER_ADDED_COLUMNS

# the epoch chain's column type (spelled in two pieces: three '>' in a row in this file's text
# would read as a doctest prompt to tests/project/test_doctests.py)
_CHAIN_TYPE = "frozen<list<tuple<bigint, bigint>" + ">>"


def _replication(config: CassandraConfig) -> str:
    if config.replication_strategy == "NetworkTopologyStrategy":
        dcs = ", ".join(f"'{dc}': {rf}" for dc, rf in sorted(config.datacenters.items()))
        return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"
    return f"{{'class': 'SimpleStrategy', 'replication_factor': {config.replication_factor}}}"


def schema_statements(config: CassandraConfig, *, keyspace: bool = True) -> list[str]:
    """The CQL statements, in order (keyspace first unless ``keyspace=False``)."""
    ks = config.keyspace
    stmts = []
    if keyspace:
        stmts.append(
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {_replication(config)}"
        )
    stmts += [
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.events_table} (
    persistence_id text,
    partition_nr bigint,
    sequence_nr bigint,
    epoch bigint,
    writer_epoch bigint,
    timestamp_us bigint,
    writer_id text,
    ser_id int,
    manifest text,
    payload blob,
    tags set<text>,
    meta map<text, text>,
    PRIMARY KEY ((persistence_id, partition_nr), sequence_nr, epoch)
) WITH CLUSTERING ORDER BY (sequence_nr ASC, epoch ASC)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.fence_table} (
    persistence_id text PRIMARY KEY,
    epoch bigint,
    owner uuid
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.epochs_table} (
    persistence_id text,
    epoch bigint,
    start_seq bigint,
    chain {_CHAIN_TYPE},
    owner uuid,
    writer_id text,
    PRIMARY KEY (persistence_id, epoch)
) WITH CLUSTERING ORDER BY (epoch DESC)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.metadata_table} (
    persistence_id text PRIMARY KEY,
    deleted_to bigint,
    partition_hint bigint
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.tag_table} (
    tag text,
    bucket bigint,
    timestamp_us bigint,
    persistence_id text,
    sequence_nr bigint,
    event_timestamp_us bigint,
    writer_id text,
    ser_id int,
    manifest text,
    payload blob,
    tags set<text>,
    meta map<text, text>,
    PRIMARY KEY ((tag, bucket), timestamp_us, persistence_id, sequence_nr)
) WITH CLUSTERING ORDER BY (timestamp_us ASC, persistence_id ASC, sequence_nr ASC)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.tag_metadata_table} (
    tag text PRIMARY KEY,
    first_bucket bigint
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{config.snapshots_table} (
    persistence_id text,
    sequence_nr bigint,
    timestamp_us bigint,
    ser_id int,
    manifest text,
    payload blob,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITH CLUSTERING ORDER BY (sequence_nr DESC)""",
    ]
    stmts += readside_schema(ks)
    stmts += timer_schema(ks)
    stmts += keystore_schema(ks)
    stmts += retention_schema(ks)
    return stmts


def schema_cql(config: CassandraConfig | None = None) -> str:
    """The schema as one CQL script (for operators / ``raysource schema``)."""
    config = config or CassandraConfig()
    header = (
        "-- raysource journal schema (generated by raysource.journal.cassandra.schema.schema_cql)\n"
        f"-- keyspace {config.keyspace}, partition_size {config.partition_size} "
        "(a client setting, not part of the schema)\n"
    )
    return header + "\n\n".join(s + ";" for s in schema_statements(config)) + "\n"


async def create_schema(
    session: CassandraSession, config: CassandraConfig | None = None, *, keyspace: bool = True
) -> None:
    """Create keyspace (unless ``keyspace=False``) and tables if missing. For development;
    production runs ``schema_cql`` through its own change process. ``session`` is a connected
    :class:`~raysource.journal.cassandra.session.CassandraSession`."""
    config = config or session.config
    for stmt in schema_statements(config, keyspace=keyspace):
        await session.execute(stmt, prepare=False, timeout=60.0)
    for table, column, cql_type in await missing_columns(session, config):
        await session.execute(
            f"ALTER TABLE {config.keyspace}.{table} ADD {column} {cql_type}",
            prepare=False,
            timeout=60.0,
        )


async def missing_columns(
    session: CassandraSession, config: CassandraConfig
) -> list[tuple[str, str, str]]:
    """The :data:`ADDED_COLUMNS` that an existing table of ``config``'s keyspace lacks (a
    missing table is not listed: ``create_schema`` creates it whole)."""
    rows = await session.select_all(
        "SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = ?",
        (config.keyspace,),
    )
    have: dict[str, set[str]] = {}
    for r in rows:
        have.setdefault(r.table_name, set()).add(r.column_name)
    return [(t, c, ty) for t, c, ty in ADDED_COLUMNS if t in have and c not in have[t]]
