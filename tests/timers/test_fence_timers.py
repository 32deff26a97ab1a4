"""A timer fire reaching a zombie activation (issue 25, hostile review): real Cassandra journal
and timer store, two journals as on two hosts.

Activation A (epoch 1, on host 1) is superseded by B (epoch 2, on host 2), which stays live;
A does not know it. A fire sent to A must not be answered from A's own view of the log:

* a fire of a timer B scheduled (beyond A's number) answered "stale" deletes B's live row:
  the timer never fires;
* a fire of a timer both know, whose command writes nothing, "consumed" by A deletes the row
  and records the fire in A's snapshot: B's timer never fires either.

Either way A must first check the fence (is its epoch still current?); a stale A answers
neither (the row stays), stops, and the fire then runs once on the live activation.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from timer_attack_world import ALARM, Arm, Clock, Poke, Rang, Ring, _scheduling

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.runtime.core import EntityCore
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.runtime.timers import fire_key
from raysource.sharding.timer_pump import TimerPump, TimerSettings
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.timers.cassandra import CassandraTimerStore

pytestmark = pytest.mark.cassandra


@pytest.fixture
async def sessions(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s1 = await CassandraSession.open(cfg, create_schema=True)
    s2 = await CassandraSession.open(cfg)
    yield s1, s2
    await s1.close()
    await s2.close()


class Two:
    """Activation A on host 1, then B on host 2 (both journals real, one timer table)."""

    def __init__(self, sessions, agg) -> None:
        s1, s2 = sessions
        self.agg = agg
        self.eid = f"z-{uuid.uuid4().hex[:8]}"
        self.clock = Clock()
        self.clock.now = datetime.now(UTC)
        self.snaps = InMemorySnapshotStore()
        self.store = CassandraTimerStore(s1, s1.config)
        self.ser = serialization_for(agg, StoreSpec())
        self.j1, self.j2 = CassandraJournal(s1, s1.config), CassandraJournal(s2, s2.config)

    def core(self, journal, writer) -> EntityCore:
        return EntityCore(
            self.agg,
            self.eid,
            journal,
            self.snaps,
            self.ser,
            writer_id=writer,
            wall_clock=self.clock,
            timer_store=self.store,
        )

    def pump(self, target: EntityCore) -> TimerPump:
        shards = [(self.agg.name, s) for s in range(self.agg.number_of_shards)]

        async def owned():
            return shards

        async def send(type_name, pid, fires):
            out = []
            for f in fires:
                try:
                    out.append(await target.handle(Keyed(f, fire_key(f.timer_id))))
                except Exception as exc:  # noqa: BLE001 - the pump judges the answer
                    out.append(exc)
            return out

        return TimerPump(
            self.store, send, owned, TimerSettings(retry_after_s=0.001), wall_ms=self.clock.ms
        )

    async def timer_ids(self) -> list[str]:
        pid = self.agg.persistence_id(self.eid)
        rows = []
        for shard in range(self.agg.number_of_shards):
            cursor = await self.store.cursor(self.agg.name, shard)
            if cursor is None:
                continue
            last = (self.clock.ms() + 60_000) // self.store.bucket_ms
            for bucket in range(cursor, last + 1):
                rows += await self.store.due(self.agg.name, shard, bucket, self.clock.ms() + 10**9)
        return sorted(r.timer_id for r in rows if r.persistence_id == pid)

    async def rings(self) -> Counter:
        j = CassandraJournal(self.j1.session, self.j1.config)
        pid = self.agg.persistence_id(self.eid)
        decoded = [
            self.ser.decode(e.serializer_id, e.manifest, e.payload) async for e in j.replay(pid)
        ]
        return Counter((e.op, e.name) for e in decoded if isinstance(e, Rang))


async def _fire(two: Two, target: EntityCore) -> None:
    pump = two.pump(target)
    await pump.run_once()
    await pump.drain()


async def test_a_fire_of_a_newer_timer_reaching_a_zombie_keeps_the_row(sessions):
    two = Two(sessions, ALARM)
    a = two.core(two.j1, "A")
    await a.handle(Arm("o1"))  # A: epoch 1, at #1
    b = two.core(two.j2, "B")
    await b.handle(Arm("o2", timers=(("x", 1),)))  # B: epoch 2, x@2 indexed; B stays live
    two.clock.now += timedelta(seconds=5)
    await _fire(two, a)  # the pump's route still names A
    assert await two.timer_ids() == ["x@2"], "a zombie answered a live timer's fire as stale"
    assert a.stopped and a.stats.stale_fires == 0
    await _fire(two, b)
    assert await two.rings() == Counter({("o2", "x"): 1})
    assert await two.timer_ids() == []
    await b.stop()


async def test_a_fire_without_events_reaching_a_zombie_is_not_consumed(sessions):
    two = Two(sessions, _scheduling(Ring("p", "x", quiet=True), after=1))
    a = two.core(two.j1, "A")
    await a.handle(Poke("p"))  # A: epoch 1, x@1 (its command writes nothing)
    b = two.core(two.j2, "B")
    await b.start()  # B: epoch 2, x@1 pending; B stays live
    assert "x" in b.timers.pending
    two.clock.now += timedelta(seconds=5)
    await _fire(two, a)
    assert await two.timer_ids() == ["x@1"], "a zombie consumed a live timer's fire"
    assert a.stopped and a.stats.timers_fired <= 1
    assert await two.snaps.load(two.agg.persistence_id(two.eid)) is None  # no zombie snapshot
    await _fire(two, b)
    assert b.stats.timers_fired == 1 and not b.stopped
    assert await two.timer_ids() == []
    await b.stop()


async def test_a_stale_fire_on_the_live_activation_is_still_answered(sessions):
    """The other side: the fence check passes on the live activation, whose stale fires
    (beyond its number, never in the journal) are answered and deleted as before."""
    from raysource.runtime.timers import TimerFire

    two = Two(sessions, ALARM)
    a = two.core(two.j1, "A")
    await a.handle(Arm("o1"))
    assert await a.handle(Keyed(TimerFire("x", "x@99"), fire_key("x@99"))) is None
    assert not a.stopped and a.stats.stale_fires == 1
    assert await a.handle(Poke("p")) == "p"
    await a.stop()
