"""A keyspace written by the version before the epoch key keeps working after
``raysource schema migrate``: its ``messages`` rows become epoch 0 of ``messages_v2``, recovery
reads them exactly, and the next activation claims epoch 1 on top of them."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())

# the events table exactly as the previous version created it (schema.py before epochs)
LEGACY_TABLE = """CREATE TABLE IF NOT EXISTS {ks}.messages (
    persistence_id text, partition_nr bigint, sequence_nr bigint, timestamp_us bigint,
    writer_id text, ser_id int, manifest text, payload blob, tags set<text>,
    meta map<text, text>,
    PRIMARY KEY ((persistence_id, partition_nr), sequence_nr)
) WITH CLUSTERING ORDER BY (sequence_nr ASC)"""
LEGACY_INSERT = (
    "INSERT INTO {ks}.messages (persistence_id, partition_nr, sequence_nr, "
    "timestamp_us, writer_id, ser_id, manifest, payload, tags, meta) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)


async def test_migrate_converts_a_legacy_keyspace(cassandra_contact):
    host, port = cassandra_contact
    ks = f"legacy_{uuid.uuid4().hex[:8]}"
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=ks, partition_size=3)
    session = await CassandraSession(cfg).connect(keyspace="")
    try:
        await session.execute(
            f"CREATE KEYSPACE {ks} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            prepare=False,
            timeout=60,
        )
        await session.execute(LEGACY_TABLE.format(ks=ks), prepare=False, timeout=60)
        pid = LEDGER.persistence_id("old")
        amounts = [5, 7, 11, 13, 17]  # 5 events over two partitions of 3
        for seq, amount in enumerate(amounts, 1):
            from raysource.examples.ledger import Appended

            sid, manifest, payload = SER.encode(Appended(f"op-{seq}", amount))
            await session.execute(
                LEGACY_INSERT.format(ks=ks),
                (
                    pid,
                    (seq - 1) // 3,
                    seq,
                    1_700_000_000_000_000 + seq,
                    "old-writer",
                    sid,
                    manifest,
                    payload,
                    None,
                    None,
                ),
            )
        # the CLI, as an operator runs it
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "raysource.cli",
                "schema",
                "migrate",
                "--cassandra",
                f"{host}:{port}",
                "--keyspace",
                ks,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert f"copied 5 rows from {ks}.messages into {ks}.messages_v2" in out.stdout

        journal = CassandraJournal(session, cfg)
        assert journal.guard == "epoch"
        assert [e.sequence_nr async for e in journal.replay(pid)] == [1, 2, 3, 4, 5]
        assert await journal.highest_sequence_nr(pid) == 5
        core = EntityCore(LEDGER, "old", journal, InMemorySnapshotStore(), SER, writer_id="new")
        stats = await core.start()
        assert stats.events_replayed == 5 and core.state.balance == sum(amounts)
        assert await core.handle(Append("op-6", 19)) == sum(amounts) + 19
        await core.stop()
        # epoch 1's record starts after the migrated epoch-0 rows
        rows = await session.execute(
            f"SELECT epoch, start_seq, chain FROM {ks}.writer_epochs WHERE persistence_id = ?",
            (pid,),
        )
        assert [(r.epoch, r.start_seq, list(r.chain)) for r in rows] == [(1, 6, [(0, 1), (1, 6)])]
        assert [e.writer_id async for e in journal.replay(pid)] == ["old-writer"] * 5 + ["new"]
        # a second run copies the same rows again (idempotent) and changes nothing
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "raysource.cli",
                "schema",
                "migrate",
                "--cassandra",
                f"{host}:{port}",
                "--keyspace",
                ks,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "copied 5 rows" in out.stdout
        assert [e.sequence_nr async for e in journal.replay(pid)] == [1, 2, 3, 4, 5, 6]
    finally:
        await session.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=60)
        await session.close()
