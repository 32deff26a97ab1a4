"""A failed epoch-record write (issue 25, hostile review), real Cassandra: the claim went
through, the record did not, so the fence names an epoch without a record. What each party
does then:

* stable readers on other hosts (``replay``, ``highest_sequence_nr``) read again for a few
  seconds, then fail with ``JournalUnavailableError`` (never answer from a record that may be
  void: README "known limit");
* the next activation (an entity core, or a writer appending without ``begin_activation``)
  claims the next epoch, writes its own record and so repairs the chain, instead of being
  refused like the readers; afterwards the stable readers answer again, and nothing
  acknowledged before is lost.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import JournalUnavailableError
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())


class _RecordFails:
    """A session proxy whose epoch-record writes fail (not sent)."""

    def __init__(self, session) -> None:
        self._s, self.failed = session, 0

    def __getattr__(self, name):
        return getattr(self._s, name)

    async def execute(self, stmt, params=None, **kw):
        if "writer_epochs" in getattr(stmt, "query_string", "") and "INSERT" in stmt.query_string:
            self.failed += 1
            raise JournalUnavailableError("injected: the record write failed")
        return await self._s.execute(stmt, params, **kw)


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


def core(journal, eid: str, writer: str) -> EntityCore:
    return EntityCore(LEDGER, eid, journal, InMemorySnapshotStore(), SER, writer_id=writer)


async def _fence_ahead_of_record(session, eid: str) -> None:
    """op-1 acknowledged by epoch 1; epoch 2 claims and its record write fails."""
    first = core(CassandraJournal(session, session.config), eid, "W1")
    assert await first.handle(Append("op-1", 5)) == 5
    await first.stop()
    broken = CassandraJournal(session, session.config)
    await broken._prepare()
    broken.session = _RecordFails(session)
    dead = core(broken, eid, "W2")
    with pytest.raises(JournalUnavailableError):
        await dead.start()
    assert broken.session.failed >= 1
    j = CassandraJournal(session, session.config)
    await j._prepare()
    assert (await j.epochs.fence(LEDGER.persistence_id(eid)))[0] == 2
    assert (await j.epochs.head(LEDGER.persistence_id(eid)))[0] == 1


async def ops(session, eid: str) -> list[str]:
    j = CassandraJournal(session, session.config)
    return [
        SER.decode(e.serializer_id, e.manifest, e.payload).op_id
        async for e in j.replay(LEDGER.persistence_id(eid))
    ]


async def test_stable_readers_wait_then_fail_and_the_next_activation_repairs(session):
    eid = f"r-{uuid.uuid4().hex[:8]}"
    await _fence_ahead_of_record(session, eid)
    pid = LEDGER.persistence_id(eid)
    reader = CassandraJournal(session, session.config)
    with pytest.raises(JournalUnavailableError, match="record is not written"):
        await reader.highest_sequence_nr(pid)
    with pytest.raises(JournalUnavailableError):
        [e async for e in reader.replay(pid)]
    nxt = core(CassandraJournal(session, session.config), eid, "W3")
    assert await nxt.handle(Append("op-2", 7)) == 12  # epoch 3 wrote its record
    assert await reader.highest_sequence_nr(pid) == 2
    assert await ops(session, eid) == ["op-1", "op-2"]
    await nxt.stop()


async def test_a_writer_without_begin_activation_repairs_instead_of_wedging(session):
    eid = f"l-{uuid.uuid4().hex[:8]}"
    await _fence_ahead_of_record(session, eid)
    pid = LEDGER.persistence_id(eid)
    lazy = CassandraJournal(session, session.config)
    event = StoredEvent(pid, 2, b"lazy:2", "x", 1, datetime.now(UTC), "lazy")
    await lazy.append([event])  # claims epoch 3 at the append, writes its record, appends #2
    assert await CassandraJournal(session, session.config).highest_sequence_nr(pid) == 2
    assert (await lazy.epochs.head(pid))[0] == 3
