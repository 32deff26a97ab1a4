"""All CQL of the read side's Cassandra tables, in one place.

Used by :mod:`raysource.readside.offsets` (the Cassandra offset store) and
:mod:`raysource.readside.views` (the effectively-once view writer). Names are validated
identifiers (:func:`~raysource.journal.cassandra.config.validate_identifier`), so interpolating
them is safe.

Tables:

* ``projection_offsets`` — one row per (projection, worker): the stored offset, the desired
  state (running/paused/stopped), the reported state and the last error. Part of the production
  schema (:func:`raysource.journal.cassandra.schema.schema_statements`).
* ``projection_parked`` — one row per (projection, persistence id) whose stream is parked on a
  poison event: the worker, the event's sequence number, the error, when. Production schema too.
* ``projection_versions`` — one row per (projection, version) deployed beside the first
  (:mod:`raysource.readside.versions`: its state and the cut its backfill read to), and per
  projection the alias every reader reads through: ``live`` (the version queries read) and
  ``previous`` (where a rollback goes), static columns switched by a conditional update.
* ``projection_effects`` — one row per (projection, persistence id, sequence number) whose
  declared side effects were claimed (a conditional insert) by the live version that ran
  them (:mod:`raysource.readside.effects`): never twice, whichever version handles the event.
* ``<view>_watermarks`` / ``<view>_applied`` — the per-view bookkeeping of
  :class:`~raysource.readside.views.EffectivelyOnceView` (created by the view's
  ``create_tables``, since a view's name is the application's).
"""

from __future__ import annotations

from raysource.journal.cassandra.config import validate_identifier

__all__ = [
    "EffectStatements",
    "OffsetStatements",
    "VersionStatements",
    "ViewStatements",
    "readside_schema",
]


def readside_schema(keyspace: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of the projection tables in ``keyspace``."""
    ks = validate_identifier(keyspace, "keyspace")
    return [
        f"""CREATE TABLE IF NOT EXISTS {ks}.projection_offsets (
    projection text,
    worker text,
    ts_us bigint,
    persistence_id text,
    sequence_nr bigint,
    desired text,
    state text,
    error text,
    updated_us bigint,
    PRIMARY KEY ((projection), worker)
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.projection_parked (
    projection text,
    persistence_id text,
    worker text,
    sequence_nr bigint,
    error text,
    parked_us bigint,
    PRIMARY KEY ((projection), persistence_id)
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.projection_versions (
    projection text,
    version int,
    state text,
    cut text,
    updated_us bigint,
    live int STATIC,
    previous int STATIC,
    PRIMARY KEY ((projection), version)
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.projection_effects (
    projection text,
    persistence_id text,
    sequence_nr bigint,
    version int,
    PRIMARY KEY ((projection, persistence_id), sequence_nr)
)""",
    ]


class OffsetStatements:
    """The offset store's statements for one keyspace (text; the session prepares them)."""

    def __init__(self, keyspace: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        off, parked = f"{ks}.projection_offsets", f"{ks}.projection_parked"
        self.create = readside_schema(ks)
        self.select = (
            f"SELECT projection, worker, ts_us, persistence_id, sequence_nr, desired, "
            f"state, error, updated_us FROM {off} WHERE projection = ?"
        )
        self.select_worker = self.select + " AND worker = ?"
        self.save_offset = (
            f"UPDATE {off} SET ts_us = ?, persistence_id = ?, sequence_nr = ?, "
            f"updated_us = ? WHERE projection = ? AND worker = ?"
        )
        self.set_desired = f"UPDATE {off} SET desired = ? WHERE projection = ? AND worker = ?"
        self.set_state = (
            f"UPDATE {off} SET state = ?, error = ?, updated_us = ? "
            f"WHERE projection = ? AND worker = ?"
        )
        self.park = (
            f"INSERT INTO {parked} (projection, persistence_id, worker, sequence_nr, "
            f"error, parked_us) VALUES (?, ?, ?, ?, ?, ?)"
        )
        self.unpark = f"DELETE FROM {parked} WHERE projection = ? AND persistence_id = ?"
        self.parked = (
            f"SELECT persistence_id, worker, sequence_nr, error, parked_us "
            f"FROM {parked} WHERE projection = ?"
        )


class ViewStatements:
    """The bookkeeping statements of one effectively-once view ``keyspace.view``."""

    def __init__(self, keyspace: str, view: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        view = validate_identifier(view, "view name")
        self.watermarks_table = f"{ks}.{view}_watermarks"
        self.applied_table = f"{ks}.{view}_applied"
        self.create_watermarks = (
            f"CREATE TABLE IF NOT EXISTS {self.watermarks_table} "
            "(persistence_id text PRIMARY KEY, sequence_nr bigint)"
        )
        self.create_applied = (
            f"CREATE TABLE IF NOT EXISTS {self.applied_table} "
            "(persistence_id text, sequence_nr bigint, applied timeuuid, "
            "PRIMARY KEY ((persistence_id), sequence_nr, applied))"
        )
        self.select_mark = (
            f"SELECT sequence_nr FROM {self.watermarks_table} WHERE persistence_id = ?"
        )
        self.select_all_marks = f"SELECT persistence_id, sequence_nr FROM {self.watermarks_table}"
        self.set_mark = (
            f"UPDATE {self.watermarks_table} SET sequence_nr = ? WHERE persistence_id = ?"
        )
        self.audit = (
            f"INSERT INTO {self.applied_table} (persistence_id, sequence_nr, applied) "
            "VALUES (?, ?, now())"
        )
        self.select_applied = f"SELECT persistence_id, sequence_nr FROM {self.applied_table}"
        self.truncate_watermarks = f"TRUNCATE {self.watermarks_table}"
        self.truncate_applied = f"TRUNCATE {self.applied_table}"


class VersionStatements:
    """The statements of the projection versions and their alias (one keyspace)."""

    def __init__(self, keyspace: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        t = f"{ks}.projection_versions"
        self.create = readside_schema(ks)
        self.live = f"SELECT live, previous FROM {t} WHERE projection = ? LIMIT 1"
        self.select = (
            f"SELECT version, state, cut, updated_us, live, previous FROM {t} WHERE projection = ?"
        )
        self.upsert = (
            f"UPDATE {t} SET state = ?, cut = ?, updated_us = ? "
            "WHERE projection = ? AND version = ?"
        )
        self.set_state = (
            f"UPDATE {t} SET state = ?, updated_us = ? WHERE projection = ? AND version = ?"
        )
        # the alias: created once (IF live = null), then moved only from the value it had
        self.init_alias = f"UPDATE {t} SET live = ? WHERE projection = ? IF live = null"
        self.switch = f"UPDATE {t} SET live = ?, previous = ? WHERE projection = ? IF live = ?"
        self.delete_offsets = f"DELETE FROM {ks}.projection_offsets WHERE projection = ?"
        self.delete_parked = f"DELETE FROM {ks}.projection_parked WHERE projection = ?"


class EffectStatements:
    """The side-effect claims of projections (one keyspace)."""

    def __init__(self, keyspace: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        t = f"{ks}.projection_effects"
        self.create = readside_schema(ks)
        self.claim = (
            f"INSERT INTO {t} (projection, persistence_id, sequence_nr, version) "
            "VALUES (?, ?, ?, ?) IF NOT EXISTS"
        )
