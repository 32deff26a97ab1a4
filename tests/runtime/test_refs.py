"""A reference re-resolves its host off the caller's event loop, keeping the order of re-sends
(real Ray and Cassandra, a dedicated ledger passivated under pipelined ``ask_async`` calls).

The resolver is slowed down (a blocking 0.3 s per resolve, like a coordinator round trip on a
loaded cluster). While a resolve runs, a heartbeat task on the caller's loop must keep ticking
(the resolve is in a thread; it used to block the loop: a Serve replica's every request
stalled behind it). Every command is answered, and the journal holds the acknowledged ops in
the order they were sent: the re-sends queued behind the resolve kept their order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
import uuid

import pytest
from ray import cloudpickle as ray_cloudpickle

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.testing.local_resolver import LocalResolver

ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.timeout(240)]

DLEDGER = dataclasses.replace(LEDGER, name="dledger", placement="dedicated")
SER = serialization_for(DLEDGER, StoreSpec())


class _Slow:
    """A resolver whose resolve blocks 0.3 s; ``busy`` while it does."""

    def __init__(self, inner: LocalResolver) -> None:
        self.inner = inner
        self.busy = threading.Event()
        self.resolves = 0

    def resolve(self, aggregate_type, entity_id):
        self.busy.set()
        try:
            time.sleep(0.3)
            self.resolves += 1
            return self.inner.resolve(aggregate_type, entity_id)
        finally:
            self.busy.clear()

    def invalidate(self, aggregate_type, entity_id, handle=None):
        self.inner.invalidate(aggregate_type, entity_id, handle)


async def test_a_re_resolve_runs_off_the_loop_and_keeps_the_send_order(
    ray_local, cassandra_contact, cassandra_keyspace
):
    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    store = StoreSpec.for_cassandra(config, create_schema=True)
    resolver = _Slow(LocalResolver(f"r{uuid.uuid4().hex[:6]}", store, host_settings={}))
    eid = f"o{uuid.uuid4().hex[:6]}"
    ref = EntityRef(DLEDGER, eid, resolver)
    assert await ref.ask_async(Append("op-first"), timeout=120) == 1
    ticks = {"during_resolve": 0}
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            if resolver.busy.is_set():
                ticks["during_resolve"] += 1
            await asyncio.sleep(0.005)

    beat = asyncio.ensure_future(heartbeat())
    resolves_before = resolver.resolves
    calls = []
    for i in range(40):
        calls.append(asyncio.ensure_future(ref.ask_async(Append(f"op-{i:02d}"), timeout=120)))
        if i == 10:
            handle = ref.actor
            await asyncio.sleep(0)
            calls.append(asyncio.ensure_future(handle.passivate.remote()))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    done.set()
    await beat
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors[:3]
    assert resolver.resolves > resolves_before  # the host retired: it was resolved again
    assert ticks["during_resolve"] > 0  # the loop ran while the resolve blocked its thread
    journal = await CassandraJournal.connect(config)
    try:
        ops = [
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            async for e in journal.replay(DLEDGER.persistence_id(eid))
        ]
    finally:
        await journal.close()
    assert ops == ["op-first"] + [f"op-{i:02d}" for i in range(40)]  # each once, in send order
    await ref.actor.passivate.remote()
