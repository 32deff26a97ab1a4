"""``raysource schema migrate``: convert a keyspace written before the epoch key.

Earlier versions stored events in ``messages`` keyed ``((persistence_id, partition_nr),
sequence_nr)``. Cassandra cannot change a primary key, so the epoch guard's events live in a new
table (``messages_v2``, keyed ``(..., sequence_nr, epoch)``). :func:`migrate_events` creates the
missing tables and copies every legacy row into the new table as **epoch 0** (the first epoch:
a persistence id without epoch records reads all its epoch-0 rows, exactly as before), and
returns how many rows it copied. Copying is idempotent (the same rows again): run it again
after an interruption. Run it while no raysource process writes the keyspace; the legacy table
is left in place (drop it once the copy is checked). It also adds the columns of newer
versions to existing tables (``create_schema``: ``ALTER TABLE ... ADD``, e.g. the trace context
of ``timer_index``), so it is the one command that brings an older keyspace up to date.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.schema import create_schema
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.cassandra.statements import journal_statements, migration_statements

__all__ = ["migrate_events", "migrate_keyspace", "legacy_table_exists", "unmigrated"]

_IN_FLIGHT = 64


async def legacy_table_exists(session: CassandraSession, config: CassandraConfig) -> bool:
    stmt = migration_statements(config)["legacy_exists"].cql
    return bool(await session.execute(stmt, (config.keyspace, config.legacy_events_table)))


async def migrate_events(session: CassandraSession, config: CassandraConfig) -> int:
    """Copy the legacy events table into the epoch-keyed one as epoch 0; returns rows copied
    (0 if there is no legacy table)."""
    import asyncio

    await create_schema(session, config, keyspace=False)
    if not await legacy_table_exists(session, config):
        return 0
    insert = await session.prepare(
        journal_statements(config)["insert"].cql, consistency_level=config.write_consistency
    )
    select = migration_statements(config)["legacy_rows"].cql
    pending: set[asyncio.Future[Any]] = set()
    copied = 0
    async for row in session.stream(select, prepare=True):
        pid, pnr, seq, ts, writer, sid, manifest, payload, tags, meta = row
        values = (pid, pnr, seq, 0, 0, ts, writer, sid, manifest, payload, tags, meta)
        pending.add(asyncio.ensure_future(session.execute(insert, values)))
        copied += 1
        if len(pending) >= _IN_FLIGHT:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                fut.result()
    if pending:
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
    await session.execute(migration_statements(config)["marker_set"].cql)
    return copied


async def migrate_keyspace(config: CassandraConfig) -> int:
    """:func:`migrate_events` on a session of its own (``raysource schema migrate``)."""
    session = CassandraSession(config)
    await session.connect(keyspace="")
    try:
        return await migrate_events(session, config)
    finally:
        await session.close()


async def unmigrated(session: CassandraSession, config: CassandraConfig) -> bool:
    """True if the keyspace still has legacy event rows that ``migrate_events`` did not copy
    to completion (the journal refuses to run on it: those events would be invisible)."""
    if config.legacy_events_table == config.events_table:
        return False
    if not await legacy_table_exists(session, config):
        return False
    stmts = migration_statements(config)
    if not await session.execute(stmts["legacy_any"].cql):
        return False
    return not await session.execute(stmts["marker_get"].cql)
