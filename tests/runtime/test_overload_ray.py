"""The mailbox limit end to end (issue 14): on real Ray and Cassandra, one caller's batch of
1200 commands to one aggregate (a dedicated host actor with the default ``max_mailbox`` 1000)
gets 1000 replies and 200 ``OverloadedError`` objects, the refusals are the batch's suffix, and
the journal holds exactly the replied commands, in order; the aggregate takes commands again
right after."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.errors import OverloadedError
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System, unique_system_name

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]


def test_batch_beyond_the_mailbox_on_ray(ray_local, cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    system = System.start(
        unique_system_name("ovl"),
        types=[LEDGER],
        store=StoreSpec.for_cassandra(config, create_schema=True),
        placement={"ledger": "dedicated"},
    )
    acct = f"acct-{uuid.uuid4().hex[:6]}"
    try:
        ref = system.entity(LEDGER, acct)
        ops = [f"op{i}" for i in range(1200)]
        outcomes = ref.ask_many([Append(op) for op in ops], timeout=120)
        kinds = ["reply" if isinstance(o, int) else type(o).__name__ for o in outcomes]
        assert kinds == ["reply"] * 1000 + ["OverloadedError"] * 200, {
            k: kinds.count(k) for k in set(kinds)
        }
        assert outcomes[999] == 1000  # the balance after the last applied one
        assert all(isinstance(o, OverloadedError) for o in outcomes[1000:])
        assert ref.ask(Append("after"), timeout=60) == 1001
    finally:
        system.shutdown()

    async def stored() -> list[str]:
        ser = Serialization()
        LEDGER.register_types(ser)
        journal = await CassandraJournal.connect(config)
        try:
            return [
                ser.decode(e.serializer_id, e.manifest, e.payload).op_id
                async for e in journal.replay(LEDGER.persistence_id(acct))
            ]
        finally:
            await journal.close()

    assert asyncio.run(stored()) == ops[:1000] + ["after"]
