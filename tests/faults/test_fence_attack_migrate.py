"""Upgrade without `schema migrate`: the new version opens a pre-epoch keyspace, sees an empty
log, and a later migrate cannot bring the old (acknowledged) events back."""

from __future__ import annotations

import uuid

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.migrate import migrate_events
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import MigrationRequiredError
from raysource.testing.fence_faults import Writer, final_log
from raysource.testing.fence_history import FenceHistory

pytestmark = pytest.mark.cassandra

LEGACY = """CREATE TABLE {ks}.messages (
    persistence_id text, partition_nr bigint, sequence_nr bigint, timestamp_us bigint,
    writer_id text, ser_id int, manifest text, payload blob, tags set<text>,
    meta map<text, text>, PRIMARY KEY ((persistence_id, partition_nr), sequence_nr))"""
INS = (
    "INSERT INTO {ks}.messages (persistence_id, partition_nr, sequence_nr, timestamp_us, "
    "writer_id, ser_id, manifest, payload) VALUES (?,?,?,?,?,?,?,?)"
)


async def test_unmigrated_keyspace_is_refused_or_read(cassandra_contact, cassandra_admin):
    host, port = cassandra_contact
    ks = f"atk_legacy_{uuid.uuid4().hex[:8]}"
    cassandra_admin.execute(
        f"CREATE KEYSPACE {ks} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    try:
        cassandra_admin.execute(LEGACY.format(ks=ks))
        p = "acct-1"
        ins = cassandra_admin.prepare(INS.format(ks=ks))
        for seq in (1, 2, 3):  # acknowledged by the previous version
            cassandra_admin.execute(ins, (p, 0, seq, 1, "old", 1, "m", f"old:{seq}".encode()))
        cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=ks)
        refused = None
        try:  # the new version starts as usual (the RUNBOOK's migrate step forgotten)
            s = await CassandraSession.open(cfg, create_schema=True)
        except Exception as exc:  # noqa: BLE001 - the behaviour we want
            refused = exc
        if refused is None:
            j = CassandraJournal(s, cfg)
            with pytest.raises(MigrationRequiredError, match="schema migrate"):
                await j.highest_sequence_nr(p)  # refused at the journal's first use
            copied = await migrate_events(s, cfg)
            assert copied == 3
            j = CassandraJournal(s, cfg)
            high = await j.highest_sequence_nr(p)
            assert high == 3
            w = Writer(j, p, "new", FenceHistory())
            await w.activate()
            op = await w.append(1)
            print("highest before:", high, "new append:", op.outcome)
            copied = await migrate_events(s, cfg)  # the operator notices and migrates
            log = await final_log(CassandraJournal(s, cfg), p)
            print("migrate copied", copied, "log after migrate:", log)
            await s.close()
            assert [n for n, _ in log][:3] == [1, 2, 3] and log[0][1] == b"old:1", (
                f"old acknowledged events gone: highest was {high}, log now {log}"
            )
    finally:
        cassandra_admin.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
