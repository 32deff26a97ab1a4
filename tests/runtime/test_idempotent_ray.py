"""Idempotency keys end to end on Ray and Cassandra (issue 15): callers in threads send ledger
commands through ``EntityRef`` (keys on, the default) while host actors are killed
(``ray.kill``) under them, again and again. With keys the refs re-send the outcome-unknown
failures under the same key, so every caller gets a reply before its deadline — no
``HostCrashedError`` reaches anyone — and the journal holds every command exactly once (each
key once, each op id once). Afterwards a caller re-sends acknowledged commands with their
upstream message ids as keys: the same replies, nothing written."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.idempotency import KEY_FIELD
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.testing.local_resolver import LocalResolver

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.timeout(300)]

SER = serialization_for(LEDGER, StoreSpec())
CALLERS, PER_CALLER, KILLS = 3, 16, 6


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def create() -> None:
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        await journal.close()

    asyncio.run(create())
    return cfg


def _journal(cfg: CassandraConfig, entity_ids) -> dict[str, list]:
    async def read():
        j = await CassandraJournal.connect(cfg)
        try:
            return {e: [ev async for ev in j.replay(LEDGER.persistence_id(e))] for e in entity_ids}
        finally:
            await j.close()

    return asyncio.run(read())


def test_killed_hosts_under_keyed_callers_apply_every_command_once(ray_local, config) -> None:
    import ray

    resolver = LocalResolver(
        f"ik{uuid.uuid4().hex[:8]}",
        StoreSpec("cassandra", config),
        placement={LEDGER.name: "dedicated"},
    )
    entities = [f"ik-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    replies: dict[str, int] = {}
    errors: list[tuple[str, BaseException]] = []
    lock = threading.Lock()
    chaos_over = threading.Event()

    def caller(k: int) -> None:
        refs = [EntityRef(LEDGER, e, resolver) for e in entities]
        for n in range(PER_CALLER):
            op = f"c{k}-{n}"
            try:
                reply = refs[n % 2].ask(Append(op, 1), timeout=60, idempotency_key=f"msg-{op}")
            except Exception as exc:  # noqa: BLE001 - every outcome is recorded
                with lock:
                    errors.append((op, exc))
                continue
            with lock:
                replies[op] = reply

    def killer() -> None:
        rng = random.Random(7)
        kills = 0
        while kills < KILLS and len(replies) + len(errors) < CALLERS * PER_CALLER:
            progress = len(replies)
            while len(replies) < progress + 2 and len(replies) + len(errors) < CALLERS * PER_CALLER:
                time.sleep(0.01)  # kill only hosts that are serving commands
            time.sleep(rng.uniform(0.0, 0.05))
            try:
                ray.kill(resolver.resolve(LEDGER, entities[kills % 2]), no_restart=True)
                kills += 1
            except Exception:  # noqa: BLE001 - a handle that is already gone
                pass
        if kills == KILLS:
            chaos_over.set()

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(CALLERS)]
    threads.append(threading.Thread(target=killer))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert chaos_over.is_set()  # every kill hit a host while callers were running
        # no caller saw an unknown outcome (nor anything else): all answered before the deadline
        assert not errors, errors
        assert len(replies) == CALLERS * PER_CALLER

        events = _journal(config, entities)
        ops = Counter(
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            for evs in events.values()
            for e in evs
        )
        keys = Counter(e.metadata.get(KEY_FIELD) for evs in events.values() for e in evs)
        writers = {e.writer_id for evs in events.values() for e in evs}
        assert len(writers) >= 4, writers  # the kills did end activations mid-load
        assert set(ops) == set(replies) and set(ops.values()) == {1}, ops
        assert set(keys) == {f"msg-{op}" for op in replies} and set(keys.values()) == {1}
        # each reply is the balance right after its own event: decided on the true state
        for evs in events.values():
            for i, e in enumerate(evs, 1):
                assert replies[SER.decode(e.serializer_id, e.manifest, e.payload).op_id] == i

        # an upstream redelivery: the same message ids again, after all the kills
        ref = EntityRef(LEDGER, entities[0], resolver)
        again = {
            op: ref.ask(Append(op, 1), timeout=60, idempotency_key=f"msg-{op}")
            for op in sorted(replies)
            if int(op.split("-")[1]) % 2 == 0
        }
        assert again == {op: replies[op] for op in again}
        after = _journal(config, entities)
        assert {e: len(v) for e, v in after.items()} == {e: len(v) for e, v in events.items()}
    finally:
        resolver.kill_all()
