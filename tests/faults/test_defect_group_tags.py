"""Issue 10, defect 3: every event of an acknowledged flush reaches its tag stream.

Tag rows are written after the events' batch; when that tag write fails (or the writer dies)
recovery re-tags "the newest atomic group". Before the fix each command of a flush got its own
timestamp while recovery found the group by (writer, timestamp): only the flush's last command
was re-tagged, and the whole flush was then acknowledged. Observed: 3 commands acknowledged
after a failed tag write, only #3 tagged. Now one flush carries one timestamp (one identifiable
group), so the repair covers all of it. Real Cassandra (the tag rows live there).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from test_tag_repair import _tagged_seqs, config  # noqa: F401  (the fixture and the tag check)

from raysource.examples.seats import SHOW, GetShow, ReserveSeat, SeatReserved
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import JournalOutcomeUnknownError, OutcomeUnknownError
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra


class TagWriteFails(CassandraJournal):
    """The events' batch lands, then the tag write fails ``failures`` times (a timeout, say;
    the writer "dies" there if it never comes back)."""

    failures = 1

    async def _write_tags(self, events):  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            raise JournalOutcomeUnknownError("tag write timed out")
        await super()._write_tags(events)


async def _core(journal: CassandraJournal, entity_id: str) -> EntityCore:
    return EntityCore(
        SHOW,
        entity_id,
        journal,
        InMemorySnapshotStore(),
        serialization_for(SHOW, StoreSpec()),
        writer_id=uuid.uuid4().hex,
    )


async def _one_flush_of_three(core: EntityCore) -> list:
    # queued together before the activation has recovered: one flush, one append
    return await asyncio.gather(
        *(core.handle(ReserveSeat(s, c)) for s, c in (("A1", "ann"), ("A2", "ben"), ("A3", "cat"))),
        return_exceptions=True,
    )


async def test_a_flush_acknowledged_after_a_failed_tag_write_is_tagged_whole(config) -> None:
    eid = f"flush-{uuid.uuid4().hex[:6]}"
    journal = await TagWriteFails.connect(config)
    core = await _core(journal, eid)
    replies = await _one_flush_of_three(core)
    assert core.stats.writes == 1  # one flush, and its tag write failed
    assert replies == [
        SeatReserved("A1", "ann"),
        SeatReserved("A2", "ben"),
        SeatReserved("A3", "cat"),
    ]  # acknowledged: the re-read found them
    await core.stop()
    await journal.close()
    assert await _tagged_seqs(config, eid) == [1, 2, 3]


async def test_the_next_activation_tags_a_whole_flush_whose_writer_died(config) -> None:
    eid = f"died-{uuid.uuid4().hex[:6]}"
    dying = await TagWriteFails.connect(config)
    dying.failures = 10**6  # never comes back
    core = await _core(dying, eid)
    replies = await _one_flush_of_three(core)
    assert all(isinstance(r, OutcomeUnknownError) for r in replies), replies  # never acked
    await core.stop()
    await dying.close()
    assert await _tagged_seqs(config, eid) == []  # stored, untagged

    journal = await CassandraJournal.connect(config)
    fresh = await _core(journal, eid)
    state = await fresh.handle(GetShow())  # recovery repairs before answering
    assert [state.holder(s) for s in ("A1", "A2", "A3")] == ["ann", "ben", "cat"]
    assert await _tagged_seqs(config, eid) == [1, 2, 3]
    await fresh.stop()
    await journal.close()


async def test_every_event_of_one_flush_carries_one_timestamp(config) -> None:
    eid = f"ts-{uuid.uuid4().hex[:6]}"
    journal = await CassandraJournal.connect(config)
    core = await _core(journal, eid)
    await _one_flush_of_three(core)
    await core.stop()
    stored = [e async for e in journal.replay(SHOW.persistence_id(eid))]
    await journal.close()
    assert [e.sequence_nr for e in stored] == [1, 2, 3]
    assert len({(e.writer_id, e.timestamp) for e in stored}) == 1
