"""All CQL of the Cassandra key store of personal data, in one place (used by
:mod:`raysource.journal.cassandra.keystore` and ``raysource forget``; part of the production
schema through :func:`raysource.journal.cassandra.schema.schema_statements`).

Tables:

* ``subject_keys`` — one row per data subject: its AES-256 ``key`` and when it was created;
  ``forget`` sets ``key`` to null and ``forgotten_ms`` (the row stays: a forgotten subject
  never gets a new key). Written only by lightweight transactions, so a key created
  concurrently in two processes is one key, and a forget racing a create wins or loses whole.
* ``subject_forget_signals`` — per (subject, projection): the view was told the subject was
  forgotten and scrubbed its rows (``raysource forget`` signals each view effectively once).
"""

from __future__ import annotations

from raysource.journal.cassandra.config import validate_identifier

__all__ = ["KEY_TABLE", "SIGNAL_TABLE", "KeyStoreStatements", "keystore_schema"]

KEY_TABLE = "subject_keys"
SIGNAL_TABLE = "subject_forget_signals"


def keystore_schema(keyspace: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of the key store's tables in ``keyspace``."""
    ks = validate_identifier(keyspace, "keyspace")
    return [
        f"""CREATE TABLE IF NOT EXISTS {ks}.{KEY_TABLE} (
    subject text PRIMARY KEY,
    key blob,
    scheme text,
    created_ms bigint,
    forgotten_ms bigint
)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.{SIGNAL_TABLE} (
    subject text,
    projection text,
    done_ms bigint,
    PRIMARY KEY ((subject), projection)
)""",
    ]


class KeyStoreStatements:
    """The key store's statements in ``keyspace`` (CQL strings; the store prepares them)."""

    def __init__(self, keyspace: str) -> None:
        ks = validate_identifier(keyspace, "keyspace")
        self.create = keystore_schema(ks)
        self.load = f"SELECT key, forgotten_ms FROM {ks}.{KEY_TABLE} WHERE subject = ?"
        self.insert = (
            f"INSERT INTO {ks}.{KEY_TABLE} (subject, key, scheme, created_ms) "
            "VALUES (?, ?, ?, ?) IF NOT EXISTS"
        )
        self.insert_forgotten = (
            f"INSERT INTO {ks}.{KEY_TABLE} (subject, forgotten_ms) VALUES (?, ?) IF NOT EXISTS"
        )
        self.destroy = (
            f"UPDATE {ks}.{KEY_TABLE} SET key = null, forgotten_ms = ? WHERE subject = ? IF EXISTS"
        )
        self.signal_done = (
            f"SELECT projection FROM {ks}.{SIGNAL_TABLE} WHERE subject = ? AND projection = ?"
        )
        self.mark_signal = (
            f"INSERT INTO {ks}.{SIGNAL_TABLE} (subject, projection, done_ms) VALUES (?, ?, ?)"
        )
        self.tables = f"SELECT table_name FROM system_schema.tables WHERE keyspace_name = '{ks}'"
        self.columns = (
            "SELECT table_name, column_name, type FROM system_schema.columns "
            f"WHERE keyspace_name = '{ks}'"
        )
