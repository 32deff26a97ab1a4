"""Tag rows are written after the events' batch: a writer that dies (or whose tag write fails)
in between must not leave events out of the read side forever. The next activation re-writes
the newest group's tag rows before it answers anyone (real Cassandra)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from raysource.examples.seats import SHOW, GetShow, ReserveSeat
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import JournalOutcomeUnknownError, JournalUnavailableError
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import WriteOutcomeUnknownError
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra

DELAY = 0.4  # tag visibility delay of these tests


class DiesBeforeTags(CassandraJournal):
    """Stores the events' batch of seat reservations from sequence number 3 on, then 'dies'
    before writing their tag rows (older rows it re-writes normally)."""

    async def _write_tags(self, events):  # noqa: ANN001
        if events[-1].sequence_nr >= 3:
            raise JournalOutcomeUnknownError("writer died between the events and their tag rows")
        await super()._write_tags(events)


class TagWriteFailsOnce(CassandraJournal):
    """The first tag write fails after the events landed (a timeout, say)."""

    failed = False

    async def _write_tags(self, events):  # noqa: ANN001
        if not self.failed:
            self.failed = True
            raise JournalUnavailableError("tag write timed out")
        await super()._write_tags(events)


@pytest.fixture
async def config(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=DELAY,
    )
    journal = await CassandraJournal.connect(cfg, create_schema=True)
    await journal.close()
    return cfg


async def _core(journal_cls, cfg: CassandraConfig, entity_id: str) -> EntityCore:
    journal = await journal_cls.connect(cfg)
    return EntityCore(
        SHOW,
        entity_id,
        journal,
        InMemorySnapshotStore(),
        serialization_for(SHOW, StoreSpec()),
        writer_id=uuid.uuid4().hex,
    )


async def _tagged_seqs(cfg: CassandraConfig, entity_id: str) -> list[int]:
    await asyncio.sleep(DELAY + 0.3)  # past the visibility delay
    journal = await CassandraJournal.connect(cfg)
    try:
        pid = SHOW.persistence_id(entity_id)
        return sorted(
            {
                t.event.sequence_nr
                async for t in journal.events_by_tag("show")
                if t.event.persistence_id == pid
            }
        )
    finally:
        await journal.close()


async def test_next_activation_retags_a_group_whose_writer_died(config) -> None:
    eid = f"died-{uuid.uuid4().hex[:6]}"
    healthy = await _core(CassandraJournal, config, eid)
    await healthy.handle(ReserveSeat("A1", "alice"))
    await healthy.handle(ReserveSeat("A2", "bob"))
    await healthy.stop()
    await healthy.journal.close()

    dying = await _core(DiesBeforeTags, config, eid)
    # its events landed, then it "died" (every tag write fails, the re-read's repair too):
    # never acknowledged, and never called "not stored"
    with pytest.raises(WriteOutcomeUnknownError):
        await dying.handle(ReserveSeat("A3", "carol"))
    await dying.journal.close()
    assert await _tagged_seqs(config, eid) == [1, 2]  # seat A3 is stored but untagged

    fresh = await _core(CassandraJournal, config, eid)
    state = await fresh.handle(GetShow())  # recovery repairs before answering
    assert state.holder("A3") == "carol"
    assert await _tagged_seqs(config, eid) == [1, 2, 3]
    await fresh.stop()
    await fresh.journal.close()


async def test_acknowledged_after_a_failed_tag_write_is_in_the_tag_stream(config) -> None:
    eid = f"once-{uuid.uuid4().hex[:6]}"
    core = await _core(TagWriteFailsOnce, config, eid)
    # the append raised, the core re-read the journal, found its events and acknowledged
    reply = await core.handle(ReserveSeat("B1", "dave"))
    assert reply is not None and core.sequence_nr == 1
    assert await _tagged_seqs(config, eid) == [1]
    await core.stop()
    await core.journal.close()


async def test_group_commit_never_exceeds_the_journal_group_limit(
    cassandra_contact, cassandra_keyspace
) -> None:
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,), port=port, keyspace=cassandra_keyspace, partition_size=10
    )
    core = await _core(CassandraJournal, cfg, f"small-{uuid.uuid4().hex[:6]}")
    # 30 commands queued at once: one flush would be 30 events > 10 per partition
    replies = await asyncio.gather(
        *(
            core.handle(
                ReserveSeat(
                    f"A{i % 10 + 1}"
                    if i < 10
                    else f"B{i % 10 + 1}"
                    if i < 20
                    else f"C{i % 10 + 1}",
                    f"c{i}",
                )
            )
            for i in range(30)
        )
    )
    assert len(replies) == 30 and core.sequence_nr == 30
    assert core.stats.writes >= 3
    await core.stop()
    await core.journal.close()
