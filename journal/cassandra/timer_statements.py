"""All CQL of the timer store's Cassandra tables, in one place (used by
:mod:`raysource.timers.cassandra`; part of the production schema through
:func:`raysource.journal.cassandra.schema.schema_statements`).

Tables:

* ``timer_index`` — the pending-timer index, partitioned by ``(type_name, shard, bucket)`` (a
  bucket is ``max(due, write time) // bucket_ms``), clustered by due time: a timer service
  reads "due by now" of one partition with one range query, and no partition is hot. The
  timer id is part of the key: a stale fire's row delete never hits a re-schedule's row.
* ``timer_cursors`` — per ``(type_name, shard)``: the oldest bucket that may still hold rows.
"""

from __future__ import annotations

from raysource.journal.cassandra.config import validate_identifier

__all__ = ["TimerStatements", "timer_schema"]


def timer_schema(keyspace: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of the timer tables in ``keyspace``."""
    ks = validate_identifier(keyspace, "keyspace")
    return [
        f"""CREATE TABLE IF NOT EXISTS {ks}.timer_index (
    type_name text,
    shard int,
    bucket bigint,
    due_ms bigint,
    persistence_id text,
    name text,
    timer_id text,
    PRIMARY KEY ((type_name, shard, bucket), due_ms, persistence_id, name, timer_id)
) WITH CLUSTERING ORDER BY (due_ms ASC, persistence_id ASC, name ASC, timer_id ASC)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.timer_cursors (
    type_name text,
    shard int,
    bucket bigint,
    PRIMARY KEY ((type_name, shard))
)""",
    ]


class TimerStatements:
    """The statements of the timer store in ``keyspace`` (CQL strings; the store prepares)."""

    def __init__(self, keyspace: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        self.create = timer_schema(ks)
        self.upsert = (
            f"INSERT INTO {ks}.timer_index (type_name, shard, bucket, due_ms, "
            f"persistence_id, name, timer_id) VALUES (?,?,?,?,?,?,?)"
        )
        self.delete = (
            f"DELETE FROM {ks}.timer_index WHERE type_name = ? AND shard = ? "
            f"AND bucket = ? AND due_ms = ? AND persistence_id = ? AND name = ? "
            f"AND timer_id = ?"
        )
        self.due = (
            f"SELECT due_ms, persistence_id, name, timer_id FROM {ks}.timer_index "
            f"WHERE type_name = ? AND shard = ? AND bucket = ? AND due_ms <= ? LIMIT ?"
        )
        self.cursor_get = f"SELECT bucket FROM {ks}.timer_cursors WHERE type_name = ? AND shard = ?"
        self.cursor_new = (
            f"INSERT INTO {ks}.timer_cursors (type_name, shard, bucket) "
            f"VALUES (?,?,?) IF NOT EXISTS"
        )
        self.cursor_set = (
            f"UPDATE {ks}.timer_cursors SET bucket = ? WHERE type_name = ? AND shard = ?"
        )
