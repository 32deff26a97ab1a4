"""All CQL of the retention cleaner (:mod:`raysource.journal.cassandra.retention`), in one place.

Table ``retention_progress`` (production schema): one row per ``(scope, key)``:

* ``("agg", persistence id)``: ``purged_to``, the sequence number up to which the cleaner
  physically deleted the aggregate's events (after writing the logical ``deleted_to`` mark), and
  ``resume_at``, the first partition that may still hold a row (every lower one was deleted
  whole);
* ``("run", aggregate type)``: ``resume_at``, where the cleaner's walk over the type's
  aggregates resumes (the ``token(persistence_id)`` of the last aggregate finished; NULL: from
  the start);
* ``("tag", tag)``: ``purged_to``, the first hour bucket that may still hold a deletable row.

The deletes are whole-partition deletes (``DELETE ... WHERE persistence_id = ? AND
partition_nr = ?``) or one clustering-range delete per partition (``sequence_nr <= ?``;
tag rows: a slice of ``(timestamp_us, persistence_id, sequence_nr)``): one tombstone per
partition or per run of rows, never one per row. The writer guard's tables (``writer_fence``,
``writer_epochs``) and ``metadata`` are never written here.
"""

from __future__ import annotations

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.statements import Stmt

__all__ = ["retention_schema", "retention_statements"]


def retention_schema(keyspace: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of the cleaner's progress table."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.retention_progress (
    scope text,
    key text,
    purged_to bigint,
    resume_at bigint,
    updated_us bigint,
    PRIMARY KEY ((scope, key))
)"""
    ]


def retention_statements(c: CassandraConfig) -> dict[str, Stmt]:
    """The cleaner's statements for config ``c`` (names are validated identifiers)."""
    ks = c.keyspace
    ev, md = f"{ks}.{c.events_table}", f"{ks}.{c.metadata_table}"
    tv, tm, snap = (
        f"{ks}.{c.tag_table}",
        f"{ks}.{c.tag_metadata_table}",
        f"{ks}.{c.snapshots_table}",
    )
    prog = f"{ks}.retention_progress"
    key = "persistence_id = ? AND partition_nr = ?"
    return {
        # ---- walking the aggregates that have snapshots, in token order (resumable)
        "snap_pids": Stmt(
            f"SELECT DISTINCT persistence_id, token(persistence_id) FROM {snap} "
            f"WHERE token(persistence_id) > ? LIMIT ?",
            "read",
            idempotent=True,
        ),
        "snap_seqs": Stmt(
            f"SELECT sequence_nr FROM {snap} WHERE persistence_id = ? LIMIT ?",
            "read",
            idempotent=True,
        ),
        "deleted_to": Stmt(
            f"SELECT deleted_to FROM {md} WHERE persistence_id = ?", "read", idempotent=True
        ),
        # ---- events: count (plan, report), probe (verify), delete (one tombstone each)
        "count_to": Stmt(
            f"SELECT COUNT(*) FROM {ev} WHERE {key} AND sequence_nr <= ?",
            "read",
            idempotent=True,
        ),
        "min_in_partition": Stmt(
            f"SELECT sequence_nr FROM {ev} WHERE {key} LIMIT 1", "read", idempotent=True
        ),
        "max_in_partition": Stmt(
            f"SELECT sequence_nr FROM {ev} WHERE {key} ORDER BY sequence_nr DESC LIMIT 1",
            "read",
            idempotent=True,
        ),
        "probe_to": Stmt(
            f"SELECT sequence_nr FROM {ev} WHERE {key} AND sequence_nr <= ? LIMIT 1",
            "read",
            idempotent=True,
        ),
        "delete_partition": Stmt(f"DELETE FROM {ev} WHERE {key}", "write", idempotent=True),
        "delete_range": Stmt(
            f"DELETE FROM {ev} WHERE {key} AND sequence_nr <= ?", "write", idempotent=True
        ),
        # ---- what readers still need: projection offsets and parked streams
        "offsets_all": Stmt(
            f"SELECT projection, worker, ts_us FROM {ks}.projection_offsets",
            "read",
            idempotent=True,
        ),
        "parked_all": Stmt(
            f"SELECT projection, persistence_id, sequence_nr FROM {ks}.projection_parked",
            "read",
            idempotent=True,
        ),
        # ---- tag rows
        "tags_all": Stmt(f"SELECT tag, first_bucket FROM {tm}", "read", idempotent=True),
        "tag_rows": Stmt(
            f"SELECT timestamp_us, persistence_id, sequence_nr FROM {tv} "
            f"WHERE tag = ? AND bucket = ? AND timestamp_us < ?",
            "read",
            idempotent=True,
        ),
        "tag_delete_slice": Stmt(
            f"DELETE FROM {tv} WHERE tag = ? AND bucket = ? "
            f"AND (timestamp_us, persistence_id, sequence_nr) >= (?, ?, ?) "
            f"AND (timestamp_us, persistence_id, sequence_nr) <= (?, ?, ?)",
            "write",
            idempotent=True,
        ),
        "tag_delete_bucket": Stmt(
            f"DELETE FROM {tv} WHERE tag = ? AND bucket = ?", "write", idempotent=True
        ),
        # ---- progress
        "progress_get": Stmt(
            f"SELECT purged_to, resume_at FROM {prog} WHERE scope = ? AND key = ?",
            "read",
            idempotent=True,
        ),
        "progress_set": Stmt(
            f"UPDATE {prog} SET purged_to = ?, resume_at = ?, updated_us = ? "
            f"WHERE scope = ? AND key = ?",
            "write",
            idempotent=True,
        ),
    }
