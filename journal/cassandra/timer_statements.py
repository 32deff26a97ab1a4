"""All CQL of the timer store's Cassandra tables, in one place (used by
:mod:`raysource.timers.cassandra`; part of the production schema through
:func:`raysource.journal.cassandra.schema.schema_statements`).

Tables:

* ``timer_index`` — the pending-timer index, partitioned by ``(type_name, shard, bucket)`` (a
  bucket is ``max(due, write time) // bucket_ms``), clustered by due time: a timer service
  reads "due by now" of one partition with one range query, and no partition is hot. The
  timer id is part of the key: a stale fire's row delete never hits a re-schedule's row.
  ``traceparent``/``tracestate``: the W3C trace context of the command that scheduled the
  timer (its journal append's span; empty when untraced), so a fire continues that trace even
  when the activation that fires it was restored from a snapshot (which keeps no trace).
* ``timer_cursors`` — per ``(type_name, shard)``: the oldest bucket that may still hold rows.
"""

from __future__ import annotations

from raysource.journal.cassandra.config import validate_identifier

__all__ = ["TIMER_ADDED_COLUMNS", "TimerStatements", "timer_schema"]

# columns added to a table after its first release: ``create_schema`` (and so ``raysource
# schema migrate``) adds them to an older keyspace (``ALTER TABLE ... ADD``); the store runs
# without them (no trace in its rows) until then, and ``raysource doctor`` names them
TIMER_ADDED_COLUMNS = (
    ("timer_index", "traceparent", "text"),
    ("timer_index", "tracestate", "text"),
)


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
    traceparent text,
    tracestate text,
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
    """The statements of the timer store in ``keyspace`` (CQL strings; the store prepares).
    ``traced=False``: for a ``timer_index`` without the trace columns (an older keyspace)."""

    def __init__(self, keyspace: str, *, traced: bool = True) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        self.traced = traced
        self.create = timer_schema(ks)
        self.columns = (
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? "
            "AND table_name = 'timer_index'"
        )
        trace_cols, trace_vals = (", traceparent, tracestate", ",?,?") if traced else ("", "")
        self.upsert = (
            f"INSERT INTO {ks}.timer_index (type_name, shard, bucket, due_ms, "
            f"persistence_id, name, timer_id{trace_cols}) VALUES (?,?,?,?,?,?,?{trace_vals})"
        )
        self.delete = (
            f"DELETE FROM {ks}.timer_index WHERE type_name = ? AND shard = ? "
            f"AND bucket = ? AND due_ms = ? AND persistence_id = ? AND name = ? "
            f"AND timer_id = ?"
        )
        self.due = (
            f"SELECT due_ms, persistence_id, name, timer_id{trace_cols} FROM {ks}.timer_index "
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
