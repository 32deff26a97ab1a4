"""Shared host actors (hosted placement: ``hosts_per_node`` actors per type and node, each
hosting many shards) on a real two-node Ray cluster with real Cassandra, fencing OFF so the
store's guard cannot hide a second writer: the handoff protocol alone must keep one writer.

The type has 4 shards and ``hosts_per_node=1``: every shard homed on a node lives in the one
shared host of that node. With rebalancing off, all 4 shards are homed on the head; a worker
joins and one explicit rebalance round moves exactly one shard to it while threads keep
appending to ledgers of every shard. Checked against the journal: every acknowledged op stored
exactly once, nothing unknown, each moved ledger written by the old host then the new one and
never again by the old (no interleaving), the other shards' ledgers by the old host alone and
never stopped (their aggregates stayed active through the handoff), and a second driver whose
resolver still had the old home cached reaches the new home for an aggregate it never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import ray
from ray_cluster import ray_cluster

from raysource.examples.ledger import LEDGER, Append, GetBalance
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec
from raysource.sharding.coordinator import CoordinatorSettings
from raysource.sharding.system import System

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.slow, pytest.mark.timeout(240)]

HLEDGER = dataclasses.replace(LEDGER, name="hledger", number_of_shards=4, placement="hosted")


def ids_per_shard(n: int) -> dict[int, list[str]]:
    """``n`` ledger ids in each of the 4 shards."""
    out: dict[int, list[str]] = {s: [] for s in range(4)}
    i = 0
    while any(len(v) < n for v in out.values()):
        eid = f"sh-{uuid.uuid4().hex[:6]}-{i}"
        i += 1
        bucket = out[shard_of(eid, 4)]
        if len(bucket) < n:
            bucket.append(eid)
    return out


def journal_writers(config: CassandraConfig, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """entity id -> [(op id, host actor name of the writer)] in journal order."""

    async def read() -> dict:
        journal = await CassandraJournal.connect(config)
        ser = Serialization()
        HLEDGER.register_types(ser)
        out = {}
        try:
            for eid in ids:
                rows = []
                async for ev in journal.replay(HLEDGER.persistence_id(eid)):
                    op = ser.decode(ev.serializer_id, ev.manifest, ev.payload).op_id
                    rows.append((op, ev.writer_id.split("@")[0]))
                out[eid] = rows
        finally:
            await journal.close()
        return out

    return asyncio.run(read())


class Load:
    """Threads appending to ledgers through refs; every outcome recorded per entity."""

    def __init__(self, system: System, ids: list[str], threads: int = 4) -> None:
        self.system, self.ids = system, ids
        self.acked: dict[str, list[tuple[float, str]]] = {i: [] for i in ids}
        self.other: dict[str, list[tuple[str, BaseException]]] = {i: [] for i in ids}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(ids[k::threads],), daemon=True)
            for k in range(threads)
        ]

    def _run(self, ids: list[str]) -> None:
        refs = {i: self.system.entity(HLEDGER, i) for i in ids}
        n = 0
        while not self._stop.is_set():
            for eid, ref in refs.items():
                op = f"{eid}/{n}"
                try:
                    ref.ask(Append(op), timeout=30)
                    self.acked[eid].append((time.monotonic(), op))
                except Exception as exc:  # noqa: BLE001 - asserted on by the test
                    self.other[eid].append((op, exc))
            n += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture(scope="module")
def cluster(cassandra_contact, cassandra_keyspace) -> Iterator[dict]:
    with ray_cluster(0, "shared") as (c, _, ns):
        host, port = cassandra_contact
        config = CassandraConfig(
            contact_points=(host,), port=port, keyspace=cassandra_keyspace, fencing=False
        )
        yield {"cluster": c, "config": config, "ns": ns}


def test_moving_one_shard_out_of_a_shared_host_keeps_one_writer_and_the_others_running(
    cluster,
) -> None:
    config: CassandraConfig = cluster["config"]
    store = StoreSpec.for_cassandra(config, create_schema=True)
    settings = dict(
        store=store,
        types=[HLEDGER],
        namespace=cluster["ns"],
        coordinator_settings=CoordinatorSettings(poll_interval=0.5, rebalance=False),
        host_settings={"hledger": {"hosts_per_node": 1}},
    )
    name = f"sh{uuid.uuid4().hex[:6]}"
    system = System.start(name, **settings)
    stale = System.start(name, **settings)  # a second driver's view of the same system
    try:
        head = ray.get_runtime_context().get_node_id()
        by_shard = ids_per_shard(3)
        ids = [e for v in by_shard.values() for e in v]
        for eid in ids:
            assert system.entity(HLEDGER, eid).ask(Append(f"{eid}/first"), timeout=60) == 1
        assert {s.shard for s in system.allocation()[head]} == {0, 1, 2, 3}
        first = ray.get(system.entity(HLEDGER, ids[0]).actor.info.remote())
        assert first["shards"] == [0, 1, 2, 3] and sorted(first["entities"]) == sorted(ids)
        # the first touch of 12 aggregates in 4 shards: one region round trip per shard
        assert system.resolver.activations == 4
        for s in range(4):  # the stale driver resolves every shard now (home: the head)
            stale.entity(HLEDGER, by_shard[s][0]).ask(GetBalance(), timeout=60)

        # one thread per aggregate: a thread that also served a moved aggregate would wait out
        # its reactivation, and the aggregates that stayed would look stalled with it
        with Load(system, ids, threads=len(ids)) as load:
            time.sleep(2)
            worker = cluster["cluster"].add_node(num_cpus=1)
            cluster["cluster"].wait_for_nodes()
            deadline = time.monotonic() + 30
            while worker.node_id not in ray.get(system.coordinator.nodes.remote()):
                assert time.monotonic() < deadline, "the worker never joined"
                time.sleep(0.2)
            moves = ray.get(system.coordinator.begin_rebalance.remote(1), timeout=60)
            moved_done = time.monotonic()
            assert len(moves) == 1 and moves[0].to_node == worker.node_id
            moved = moves[0].shard
            # load goes on until every aggregate, moved (reactivated on the worker) or not, has
            # been acknowledged after the move
            deadline = time.monotonic() + 120
            while not all(load.acked[e] and load.acked[e][-1][0] > moved_done for e in ids):
                assert time.monotonic() < deadline, "an aggregate was not served after the move"
                assert not any(load.other.values()), load.other
                time.sleep(0.2)
        stayed = [e for e in ids if shard_of(e, 4) != moved]
        went = by_shard[moved]

        # no command failed or was left unknown; every acknowledged op is stored exactly once
        assert not any(load.other.values()), {e: v[:2] for e, v in load.other.items() if v}
        rows = journal_writers(config, ids)
        for eid in ids:
            ops = Counter(op for op, _ in rows[eid])
            assert not [op for op, n in ops.items() if n > 1], f"{eid}: ran twice"
            acked = {op for _, op in load.acked[eid]} | {f"{eid}/first"}
            assert set(ops) == acked, f"{eid}: journal != acknowledged"

        old = first["name"]
        for eid in went:  # the old host, then the new one, never interleaved
            writers = [w for _, w in rows[eid]]
            assert writers[-1] != old, f"{eid}: still written by the old host after the move"
            switch = next(i for i, w in enumerate(writers) if w != old)
            assert set(writers[:switch]) == {old}
            assert len(set(writers[switch:])) == 1 and f":{worker.node_id}:" in writers[switch]
        for eid in stayed:  # never moved, and served during the whole move
            assert {w for _, w in rows[eid]} == {old}
            assert load.acked[eid][-1][0] > moved_done  # and after it

        after = ray.get(system.entity(HLEDGER, stayed[0]).actor.info.remote())
        assert after["pid"] == first["pid"] and after["retired"] is None
        assert moved not in after["shards"] and set(after["entities"]) >= set(stayed)
        assert not set(after["entities"]) & set(went)
        # only the moved shard's aggregates were stopped by the handoff
        assert after["stats"]["passivations"].get("handoff") == len(went)

        # the stale driver still has the old home and host cached for the moved shard: a
        # ledger it never touched goes there first, is refused (not applied) and re-resolved
        fresh = next(e for e in (f"fresh-{i}" for i in range(1000)) if shard_of(e, 4) == moved)
        assert stale.entity(HLEDGER, fresh).ask(Append(f"{fresh}/1"), timeout=60) == 1
        ((row,),) = journal_writers(config, [fresh]).values()
        assert f":{worker.node_id}:" in row[1]
        for eid in went:
            balance = stale.entity(HLEDGER, eid).ask(GetBalance(), timeout=60)
            assert balance == len(rows[eid])
    finally:
        system.shutdown(timeout=20)
