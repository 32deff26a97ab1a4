"""The shard coordinator under the epoch guard (real Cassandra): an instance claims its journal
when it starts, before it reads its history, so a newer instance fences an older one at once
(not at the newer one's first write), and a fenced instance stops serving instead of writing on
top of a log it no longer owns."""

from __future__ import annotations

import uuid

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.sharding.coordinator import CoordinatorSettings, ShardCoordinator
from raysource.sharding.errors import CoordinatorFencedError

pytestmark = pytest.mark.cassandra


class Members:
    def __call__(self) -> list[str]:
        return ["n1"]


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    assert cfg.guard == "epoch"  # the default this test is about
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


def coordinator(session, system: str) -> ShardCoordinator:
    journal = CassandraJournal(session, session.config)
    return ShardCoordinator(system, lambda: journal, Members(), CoordinatorSettings(), poll=False)


async def test_a_started_instance_fences_the_older_one_before_it_writes(session):
    system = f"s{uuid.uuid4().hex[:8]}"
    first = coordinator(session, system)
    await first.register_type("a", 4)
    second = coordinator(session, system)
    assert await second.ready() == 1  # started and recovered; it has written nothing
    # the second instance's claim happened at its start: the first may not write any more
    with pytest.raises(CoordinatorFencedError):
        await first.register_type("c", 2)
    with pytest.raises(CoordinatorFencedError):
        await first.home("a", 0)  # it stopped serving
    await second.register_type("b", 2)
    assert await second.home("a", 0) == "n1"
    third = coordinator(session, system)  # the log the next instance recovers: no 'c'
    await third.ready()
    described = await third.describe()
    assert described["events"] == await second.ready()
    journal = CassandraJournal(session, session.config)
    writers = [e.writer_id async for e in journal.replay(second.persistence_id)]
    # the first instance's one event, then only the second's: nothing of the fenced 'c'
    second_id = (await second.describe())["instance"]
    assert writers[0] != second_id and set(writers[1:]) == {second_id}, writers
    assert len(writers) == described["events"] >= 2
