"""Every CQL statement of the Cassandra journal, in one place.

:func:`journal_statements` returns ``{name: Stmt}`` for a validated
:class:`~raysource.journal.cassandra.config.CassandraConfig` (table names are checked
identifiers, so interpolating them is safe). ``Stmt.level`` says which consistency the statement
runs at ("write", "read" or "serial"; a conditional statement also carries the serial level), and
``Stmt.idempotent`` whether the driver may re-send it (reads, and writes of the same values).

The fence table (``writer_fence``) is written **only** by lightweight transactions
(``IF NOT EXISTS`` / ``IF epoch = ?``): a plain write mixed into cells written by Paxos can be
silently lost or win against a later claim (Paxos ballots and client timestamps are different
clocks). ``tests/project/test_fence_lint.py`` checks every statement here and in the schema for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysource.journal.cassandra.config import CassandraConfig

__all__ = ["Stmt", "journal_statements", "migration_statements", "EVENT_COLUMNS", "MIGRATED_MARK"]

#: the reserved metadata row ``raysource schema migrate`` writes once its copy completed
MIGRATED_MARK = "__raysource_migrated_to_epochs__"

#: The event row's columns in insert order (``epoch`` is part of the key; ``writer_epoch`` is
#: the same value kept as a regular column, see ``raysource.journal.cassandra.epochs``).
EVENT_COLUMNS = (
    "persistence_id, partition_nr, sequence_nr, epoch, writer_epoch, timestamp_us, "
    "writer_id, ser_id, manifest, payload, tags, meta"
)
_MARKS = ",".join("?" * 12)


@dataclass(frozen=True)
class Stmt:
    """One statement: its CQL, its consistency kind and whether re-sending it is harmless."""

    cql: str
    level: str  # "write" | "read" | "serial"
    idempotent: bool = False
    conditional: bool = False  # a lightweight transaction (runs a Paxos round)


def journal_statements(c: CassandraConfig) -> dict[str, Stmt]:
    """The journal's statements for config ``c`` (see the module docstring)."""
    ks = c.keyspace
    ev, md = f"{ks}.{c.events_table}", f"{ks}.{c.metadata_table}"
    tv, tm = f"{ks}.{c.tag_table}", f"{ks}.{c.tag_metadata_table}"
    fence, epochs = f"{ks}.{c.fence_table}", f"{ks}.{c.epochs_table}"
    key = "persistence_id = ? AND partition_nr = ?"
    return {
        # ---- events
        "insert": Stmt(
            f"INSERT INTO {ev} ({EVENT_COLUMNS}) VALUES ({_MARKS})", "write", idempotent=True
        ),
        "insert_if": Stmt(
            f"INSERT INTO {ev} ({EVENT_COLUMNS}) VALUES ({_MARKS}) IF NOT EXISTS",
            "write",
            conditional=True,
        ),
        "range": Stmt(
            f"SELECT sequence_nr, writer_epoch, timestamp_us, writer_id, ser_id, manifest, "
            f"payload, tags, meta FROM {ev} WHERE {key} AND sequence_nr >= ? "
            f"AND sequence_nr <= ?",
            "read",
            idempotent=True,
        ),
        # the decisive read after an unconfirmed conditional append (per-append guard): at the
        # serial consistency it completes (or supersedes) a Paxos proposal still in flight
        "range_serial": Stmt(
            f"SELECT sequence_nr, writer_epoch, writer_id, payload FROM {ev} WHERE {key} "
            f"AND sequence_nr >= ? AND sequence_nr <= ?",
            "serial",
            idempotent=True,
        ),
        # the epoch guard's scan of the open segment: (sequence number, epoch) only
        "run_scan": Stmt(
            f"SELECT sequence_nr, writer_epoch FROM {ev} WHERE {key} AND sequence_nr >= ?",
            "read",
            idempotent=True,
        ),
        "max_in_partition": Stmt(
            f"SELECT sequence_nr FROM {ev} WHERE {key} ORDER BY sequence_nr DESC LIMIT 1",
            "read",
            idempotent=True,
        ),
        # ---- metadata
        "meta": Stmt(
            f"SELECT deleted_to, partition_hint FROM {md} WHERE persistence_id = ?",
            "read",
            idempotent=True,
        ),
        # ---- many aggregates activated together (journal/cassandra/bulk_claims.py)
        "meta_many": Stmt(
            f"SELECT persistence_id, deleted_to, partition_hint FROM {md} "
            f"WHERE persistence_id IN ?",
            "read",
            idempotent=True,
        ),
        # is there any row in the first two partitions (a log never written: none)
        "probe_many": Stmt(
            f"SELECT persistence_id, partition_nr, sequence_nr FROM {ev} "
            f"WHERE persistence_id IN ? AND partition_nr IN (0, 1) PER PARTITION LIMIT 1",
            "read",
            idempotent=True,
        ),
        "set_deleted": Stmt(
            f"UPDATE {md} SET deleted_to = ? WHERE persistence_id = ?", "write", idempotent=True
        ),
        "set_hint": Stmt(
            f"UPDATE {md} SET partition_hint = ? WHERE persistence_id = ?", "write", idempotent=True
        ),
        # ---- tags
        "tag_insert": Stmt(
            f"INSERT INTO {tv} (tag, bucket, timestamp_us, persistence_id, sequence_nr, "
            f"event_timestamp_us, writer_id, ser_id, manifest, payload, tags, meta) "
            f"VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            "write",
            idempotent=True,
        ),
        "tag_select": Stmt(
            f"SELECT timestamp_us, persistence_id, sequence_nr, event_timestamp_us, writer_id, "
            f"ser_id, manifest, payload, tags, meta FROM {tv} WHERE tag = ? AND bucket = ? "
            f"AND (timestamp_us, persistence_id, sequence_nr) > (?, ?, ?) "
            f"AND timestamp_us <= ?",
            "read",
            idempotent=True,
        ),
        "tag_first_get": Stmt(
            f"SELECT first_bucket FROM {tm} WHERE tag = ?", "read", idempotent=True
        ),
        "tag_first_new": Stmt(
            f"INSERT INTO {tm} (tag, first_bucket) VALUES (?, ?) IF NOT EXISTS",
            "write",
            conditional=True,
        ),
        "tag_first_lower": Stmt(
            f"UPDATE {tm} SET first_bucket = ? WHERE tag = ? IF first_bucket = ?",
            "write",
            conditional=True,
        ),
        # ---- the epoch guard: fence (LWT only) and epoch records (written once each)
        "fence_get": Stmt(
            f"SELECT epoch, owner FROM {fence} WHERE persistence_id = ?", "read", idempotent=True
        ),
        # one read for the fence rows of many aggregates (a host's flushes of one loop tick)
        "fence_many": Stmt(
            f"SELECT persistence_id, epoch, owner FROM {fence} WHERE persistence_id IN ?",
            "read",
            idempotent=True,
        ),
        "fence_get_serial": Stmt(
            f"SELECT epoch, owner FROM {fence} WHERE persistence_id = ?", "serial", idempotent=True
        ),
        "fence_first": Stmt(
            f"INSERT INTO {fence} (persistence_id, epoch, owner) VALUES (?, 1, ?) IF NOT EXISTS",
            "write",
            conditional=True,
        ),
        "fence_next": Stmt(
            f"UPDATE {fence} SET epoch = ?, owner = ? WHERE persistence_id = ? IF epoch = ?",
            "write",
            conditional=True,
        ),
        "head": Stmt(
            f"SELECT epoch, start_seq, chain FROM {epochs} WHERE persistence_id = ? LIMIT 1",
            "read",
            idempotent=True,
        ),
        # the two newest epoch records of many aggregates (bulk_claims: the head below a
        # claimed epoch is among them unless two newer epochs recorded meanwhile)
        "head_many": Stmt(
            f"SELECT persistence_id, epoch, start_seq, chain FROM {epochs} "
            f"WHERE persistence_id IN ? PER PARTITION LIMIT 2",
            "read",
            idempotent=True,
        ),
        "head_below": Stmt(
            f"SELECT epoch, start_seq, chain FROM {epochs} "
            f"WHERE persistence_id = ? AND epoch < ? LIMIT 1",
            "read",
            idempotent=True,
        ),
        "record": Stmt(
            f"INSERT INTO {epochs} (persistence_id, epoch, start_seq, chain, owner, "
            f"writer_id) VALUES (?, ?, ?, ?, ?, ?)",
            "write",
            idempotent=True,
        ),
    }


def migration_statements(c: CassandraConfig) -> dict[str, Stmt]:
    """``raysource schema migrate``'s reads of a pre-epoch keyspace (its ``messages`` table,
    keyed without the epoch); the copy uses ``journal_statements(c)["insert"]``."""
    ks = c.keyspace
    return {
        "legacy_exists": Stmt(
            "SELECT table_name FROM system_schema.tables "
            "WHERE keyspace_name = ? AND table_name = ?",
            "read",
            idempotent=True,
        ),
        "legacy_any": Stmt(
            f"SELECT persistence_id FROM {ks}.{c.legacy_events_table} LIMIT 1",
            "read",
            idempotent=True,
        ),
        # the mark ``migrate`` leaves when its copy completed (a reserved metadata row)
        "marker_get": Stmt(
            f"SELECT deleted_to FROM {ks}.{c.metadata_table} "
            f"WHERE persistence_id = '{MIGRATED_MARK}'",
            "read",
            idempotent=True,
        ),
        "marker_set": Stmt(
            f"UPDATE {ks}.{c.metadata_table} SET deleted_to = 0 "
            f"WHERE persistence_id = '{MIGRATED_MARK}'",
            "write",
            idempotent=True,
        ),
        "legacy_rows": Stmt(
            f"SELECT persistence_id, partition_nr, sequence_nr, timestamp_us, writer_id, ser_id, "
            f"manifest, payload, tags, meta FROM {ks}.{c.legacy_events_table}",
            "read",
            idempotent=True,
        ),
    }
