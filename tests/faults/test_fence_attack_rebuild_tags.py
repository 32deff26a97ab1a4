"""The runtime's rebuild after a failed follow-up write (core._after_failed_write ->
_recover) reads the journal WITHOUT its own epoch bound (replay/highest_sequence_nr take the
newest record), and repairs the tags of the newest group it sees: here another activation's
unacknowledged row that a concurrently recovering activation then drops. README: "recovery and
tag streams never do" (see invalid rows)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from raysource.examples.ledger import LEDGER, Append, Appended
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import JournalError, JournalOutcomeUnknownError
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.fence_faults import Gates

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=1.0,
    )
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


async def test_rebuild_tags_an_invalid_row(session):
    cfg = session.config
    entity = f"a{uuid.uuid4().hex[:6]}"
    pid = LEDGER.persistence_id(entity)
    cj = CassandraJournal(session, cfg)
    core = EntityCore(LEDGER, entity, cj, InMemorySnapshotStore(), SER, writer_id="C")
    await core.start()
    assert await core.handle(Append("op-1", 1)) == 1
    reached, go = asyncio.Event(), asyncio.Event()

    async def c_hook(step, **info):
        if step == "append.after_fence" and info.get("first") == 2:
            reached.set()
            await go.wait()
            raise JournalOutcomeUnknownError(
                "injected: #2 passed its fence read, its tag write failed"
            )

    cj.hook = c_hook
    t_c = asyncio.create_task(core.handle(Append("op-2", 2)))
    await reached.wait()
    # V: a newer activation (epoch 2) starts after #2 and writes its own #3, unacknowledged
    vj, vg = CassandraJournal(session, cfg), Gates()
    vj.hook = vg
    await vj.begin_activation(pid, "V")
    sid, manifest, payload = SER.encode(Appended("op-V", 1000))
    ev3 = StoredEvent(pid, 3, payload, manifest, sid, datetime.now(UTC), "V", frozenset({"ledger"}))
    v_send, v_fence = vg.hold("append.before_w1"), vg.hold("append.after_w1")
    t_v = asyncio.create_task(vj.append([ev3]))
    await v_send.reached.wait()
    # V2 (epoch 3) claims and reads its view (#3 not landed: its segment starts at #3)
    v2j, v2g = CassandraJournal(session, cfg), Gates()
    v2j.hook = v2g
    v2_rec = v2g.hold("record.before")
    t_v2 = asyncio.create_task(v2j.begin_activation(pid, "V2"))
    await v2_rec.reached.wait()
    assert v2_rec.info["start"] == 3
    v_send.release()
    await v_fence.reached.wait()  # (#3, epoch 2) landed
    go.set()  # C's follow-up fails -> the core re-reads (rebuild) and repairs tags
    reply = await t_c
    print("C's #2 answered:", reply)
    v2_rec.release()
    await t_v2
    v_fence.release()
    try:
        await t_v
    except JournalError as exc:
        print("V:", type(exc).__name__)
    final = [(e.sequence_nr, e.writer_id) async for e in CassandraJournal(session, cfg).replay(pid)]
    done_us = time.time_ns() // 1000
    reader = CassandraJournal(session, cfg)
    while True:  # until the tag query's cutoff has passed every write above
        tagged = [
            (t.event.persistence_id, t.event.sequence_nr, t.event.writer_id)
            async for t in reader.events_by_tag("ledger")
        ]
        if time.time_ns() // 1000 - 1_000_000 > done_us + 200_000:
            break
        await asyncio.sleep(0.2)
    mine = [(n, w) for p, n, w in tagged if p == pid]
    print("final log", final, "tag stream", mine)
    await core.stop()
    assert set(mine) <= set(final), f"tag stream has {mine}, the valid log is {final}"
