"""Host-wide flushes on real Ray and Cassandra: one hosted actor serves several ledger
aggregates (ids picked in one shard); concurrent keyed callers in one process; the host actor is
killed (``ray.kill``) while its shared event writes are in flight, twice. Every part of a shared
request that was cut off is outcome unknown; the references re-send those under the same key, so
every caller gets its reply and the journal holds every command exactly once, each reply the
balance right after its own event. The host's counters show the flushes did share requests."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.testing.local_resolver import LocalResolver

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.timeout(300)]

SER = serialization_for(LEDGER, StoreSpec())
AGGREGATES, ROUNDS, KILLS = 8, 12, 2


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def create() -> None:
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        await journal.close()

    asyncio.run(create())
    return cfg


def _same_shard(n: int) -> list[str]:
    tag, ids = uuid.uuid4().hex[:6], []
    i = 0
    while len(ids) < n:
        eid = f"sh-{tag}-{i}"
        if shard_of(eid, LEDGER.number_of_shards) == 0:
            ids.append(eid)
        i += 1
    return ids


def test_host_killed_under_shared_flushes_applies_every_command_once(ray_local, config):
    import ray

    resolver = LocalResolver(
        f"sf{uuid.uuid4().hex[:8]}",
        StoreSpec("cassandra", config),
        placement={LEDGER.name: "hosted"},
    )
    ids = _same_shard(AGGREGATES)
    replies: dict[str, int] = {}
    shared_seen: list[dict] = []

    async def load() -> None:
        refs = [EntityRef(LEDGER, e, resolver) for e in ids]

        async def one(i: int, r: int) -> None:
            op = f"{ids[i]}/{r}"
            replies[op] = await refs[i].ask_async(
                Append(op, 1), timeout=120, idempotency_key=f"k-{op}"
            )

        for r in range(ROUNDS):
            if r in (4, 8):
                info = await refs[0].actor.info.remote()
                shared_seen.append(info.get("shared_writes") or {})
            calls = [asyncio.ensure_future(one(i, r)) for i in range(AGGREGATES)]
            if r in (4, 8):  # this round's shared writes under way: the host dies
                await asyncio.sleep(0.005)
                ray.kill(refs[0].actor, no_restart=True)
            await asyncio.gather(*calls)
        info = await refs[0].actor.info.remote()
        shared_seen.append(info.get("shared_writes") or {})

    try:
        asyncio.run(load())
        assert len(replies) == AGGREGATES * ROUNDS
        # the aggregates' flushes shared requests (before the kills and after)
        assert all(s.get("largest", 0) >= 2 for s in shared_seen), shared_seen

        async def read():
            j = await CassandraJournal.connect(config)
            try:
                return {e: [ev async for ev in j.replay(LEDGER.persistence_id(e))] for e in ids}
            finally:
                await j.close()

        events = asyncio.run(read())
        ops = Counter(
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            for evs in events.values()
            for e in evs
        )
        assert set(ops) == set(replies) and set(ops.values()) == {1}, ops
        writers = {e.writer_id for evs in events.values() for e in evs}
        assert len(writers) >= KILLS + 1, writers  # the kills ended activations mid-load
        for evs in events.values():  # each reply: the balance right after its own event
            for i, e in enumerate(evs, 1):
                assert replies[SER.decode(e.serializer_id, e.manifest, e.payload).op_id] == i
    finally:
        resolver.kill_all()
