"""The runtime on the epoch guard: a new activation fences the old one; the old one's next
command is "outcome unknown" (never "not applied"), it stops, and nothing it acknowledged is
lost (real Cassandra, two entity cores as on two hosts)."""

from __future__ import annotations

import uuid

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


async def test_a_fenced_activation_answers_unknown_and_stops(cassandra_contact,
                                                             cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s1 = await CassandraSession.open(cfg, create_schema=True)
    s2 = await CassandraSession.open(cfg)
    eid = f"acct-{uuid.uuid4().hex[:8]}"
    try:
        old = EntityCore(LEDGER, eid, CassandraJournal(s1, cfg), InMemorySnapshotStore(), SER,
                         writer_id="old")
        assert await old.handle(Append("op-1", 5)) == 5
        new = EntityCore(LEDGER, eid, CassandraJournal(s2, cfg), InMemorySnapshotStore(), SER,
                         writer_id="new")
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
        ops = [SER.decode(e.serializer_id, e.manifest, e.payload).op_id
               async for e in journal.replay(LEDGER.persistence_id(eid))]
        assert ops == ["op-1", "op-4"]
        await new.stop()
        await old.stop()
    finally:
        await s1.close()
        await s2.close()
