"""The runtime on the epoch guard: a new activation fences the old one; the old one's next
command is "outcome unknown" (never "not applied"), it stops, and nothing it acknowledged is
lost (real Cassandra, two entity cores as on two hosts)."""

from __future__ import annotations

import uuid
from datetime import UTC

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import AggregateStoppedError, WriteOutcomeUnknownError
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())


async def test_a_fenced_activation_answers_unknown_and_stops(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s1 = await CassandraSession.open(cfg, create_schema=True)
    s2 = await CassandraSession.open(cfg)
    eid = f"acct-{uuid.uuid4().hex[:8]}"
    try:
        old = EntityCore(
            LEDGER, eid, CassandraJournal(s1, cfg), InMemorySnapshotStore(), SER, writer_id="old"
        )
        assert await old.handle(Append("op-1", 5)) == 5
        new = EntityCore(
            LEDGER, eid, CassandraJournal(s2, cfg), InMemorySnapshotStore(), SER, writer_id="new"
        )
        await new.start()  # claims epoch 2, recovers #1
        assert new.state.balance == 5
        with pytest.raises(WriteOutcomeUnknownError):
            await old.handle(Append("op-2", 100))  # fenced after its write: unknown
        assert old.stopped
        with pytest.raises(AggregateStoppedError):
            await old.handle(Append("op-3", 1))
        assert await new.handle(Append("op-4", 7)) == 12
        # the fenced write (#2 of epoch 1) is invalid for good: the log is op-1, op-4
        journal = CassandraJournal(s1, cfg)
        ops = [
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            async for e in journal.replay(LEDGER.persistence_id(eid))
        ]
        assert ops == ["op-1", "op-4"]
        await new.stop()
        await old.stop()
    finally:
        await s1.close()
        await s2.close()


async def test_concurrent_flushes_of_many_aggregates_share_fence_reads(
    cassandra_contact, cassandra_keyspace
):
    """20 aggregates flush at once on one journal (a host): their fence reads go out as fewer
    requests than flushes, and each aggregate still gets its own fence row's answer (one of
    them is fenced by a newer activation: only it fails, outcome unknown)."""
    import asyncio
    from datetime import datetime

    from raysource.journal.api import StoredEvent
    from raysource.journal.errors import WriterFencedError

    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s = await CassandraSession.open(cfg, create_schema=True)
    try:
        journal = CassandraJournal(s, cfg)
        pids = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]
        for p in pids:
            await journal.begin_activation(p, "host")
        await CassandraJournal(s, cfg).begin_activation(pids[7], "elsewhere")  # fences #7
        reads = {"many": 0, "one": 0}
        real = s.execute

        async def counting(stmt, params=None, **kw):
            if "writer_fence" in getattr(stmt, "query_string", ""):
                reads["many" if " IN " in stmt.query_string else "one"] += 1
            return await real(stmt, params, **kw)

        s.execute = counting
        now = datetime.now(UTC)
        res = await asyncio.gather(
            *(journal.append([StoredEvent(p, 1, b"x", "m#1", 1, now, "host")]) for p in pids),
            return_exceptions=True,
        )
        s.execute = real
        assert [type(r).__name__ for r in res] == [
            "WriterFencedError" if i == 7 else "NoneType" for i in range(20)
        ]
        assert isinstance(res[7], WriterFencedError)
        assert reads["many"] >= 1 and reads["many"] + reads["one"] < len(pids)
    finally:
        await s.close()
