"""Claims held by a process (issue 25, hostile review), real Cassandra, two journals as on two
hosts: a failed recovery must release its claim (else the process keeps reading the dead
activation's view), and a process holding many claims must never drop a live activation's
claim (else that activation, superseded elsewhere, claims again lazily and acknowledges after
the newer activation recovered without its event: rule H4)."""

from __future__ import annotations

import uuid

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.epochs import Claim
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import JournalUnavailableError
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import AggregateStoppedError, WriteOutcomeUnknownError
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())


@pytest.fixture
async def sessions(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s1 = await CassandraSession.open(cfg, create_schema=True)
    s2 = await CassandraSession.open(cfg)
    yield s1, s2
    await s1.close()
    await s2.close()


def core(journal: CassandraJournal, eid: str, writer: str) -> EntityCore:
    return EntityCore(LEDGER, eid, journal, InMemorySnapshotStore(), SER, writer_id=writer)


async def ops(journal: CassandraJournal, eid: str) -> list[str]:
    return [
        SER.decode(e.serializer_id, e.manifest, e.payload).op_id
        async for e in journal.replay(LEDGER.persistence_id(eid))
    ]


async def test_a_failed_recovery_releases_its_claim(sessions):
    s1, s2 = sessions
    j1, j2 = CassandraJournal(s1, s1.config), CassandraJournal(s2, s2.config)
    eid = f"f-{uuid.uuid4().hex[:8]}"
    pid = LEDGER.persistence_id(eid)
    real = j1.highest_sequence_nr

    async def fails_once(persistence_id):  # the recovery's read fails (after the claim)
        j1.highest_sequence_nr = real
        raise JournalUnavailableError("injected: read timeout during recovery")

    j1.highest_sequence_nr = fails_once
    failed = core(j1, eid, "F")
    with pytest.raises(JournalUnavailableError):
        await failed.start()
    assert (pid, "F") not in j1._claims, "a failed recovery kept its claim"
    b = core(j2, eid, "B")  # another host takes over and writes
    assert await b.handle(Append("op-1", 5)) == 5
    assert await b.handle(Append("op-2", 5)) == 10
    # this process follows the stable log, not the dead activation's view
    assert await j1.highest_sequence_nr(pid) == 2
    assert await ops(j1, eid) == ["op-1", "op-2"]
    await b.stop()


async def test_a_live_claim_survives_a_process_holding_many(sessions):
    s1, s2 = sessions
    j1, j2 = CassandraJournal(s1, s1.config), CassandraJournal(s2, s2.config)
    eid = f"k-{uuid.uuid4().hex[:8]}"
    a = core(j1, eid, "A")
    assert await a.handle(Append("op-1", 5)) == 5  # A: epoch 1, live on host 1
    # host 1 holds many claims (leaked by writers that never ended, say): 100,001 of them
    leaked = Claim("leak", "w", 1, uuid.uuid4(), 1, 1, confirmed=True)
    j1._claims.update({(f"leak-{i}", "w"): leaked for i in range(100_001)})
    other = core(j1, f"o-{uuid.uuid4().hex[:8]}", "O")
    await other.start()  # one more claim on host 1
    b = core(j2, eid, "B")
    await b.start()  # B: epoch 2 on host 2, recovered #1; live
    # A never learned of B: its next write must be fenced (outcome unknown), never acked
    with pytest.raises(WriteOutcomeUnknownError):
        await a.handle(Append("op-2", 100))
    assert a.stopped
    with pytest.raises(AggregateStoppedError):
        await a.handle(Append("op-3", 1))
    assert await b.handle(Append("op-4", 7)) == 12  # B was not fenced by A
    assert await ops(CassandraJournal(s1, s1.config), eid) == ["op-1", "op-4"]
    await b.stop()
    await other.stop()
