"""The background retention cleaner on real Ray + Cassandra (issue 27): a system started with
``retention=RetentionSettings(...)`` runs one cleaner actor however many drivers start it,
which applies the type's policy without the CLI (exactly the rows the policy names go, a
type that keeps everything is untouched, the live aggregates keep answering), and
``System.shutdown`` stops it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest

from raysource.examples.ledger import LEDGER, Append, GetBalance
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import ConfigError
from raysource.journal.retention import KeepFromSnapshot
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.stores import StoreSpec
from raysource.sharding.ray_nodes import named_actors
from raysource.sharding.retention_service import RetentionSettings, retention_service_name
from raysource.sharding.system import System

pytestmark = pytest.mark.cassandra


async def rows_of(session, config, pid: str) -> list[int]:
    out: list[int] = []
    for p in range(8):
        rows = await session.select_all(
            f"SELECT sequence_nr FROM {config.keyspace}.{config.events_table} "
            f"WHERE persistence_id = ? AND partition_nr = ?",
            (pid, p),
        )
        out += [r[0] for r in rows]
    return sorted(out)


def test_settings_are_checked():
    for bad in ({"every_s": 0}, {"rows_per_s": -1}, {"max_aggregates": 0}):
        with pytest.raises(ConfigError):
            RetentionSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a Cassandra store"):
        System.start("x", store=StoreSpec(), types=[LEDGER], retention=RetentionSettings())


async def test_the_system_runs_the_cleaner_in_the_background(
    ray_local, cassandra_contact, cassandra_keyspace
):
    config = CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, partition_size=4, request_timeout=30.0
    )
    run = uuid.uuid4().hex[:6]
    cleaned = dataclasses.replace(
        LEDGER,
        name=f"bg{run}",
        snapshot=SnapshotPolicy(every_n_events=5, keep=2),
        retention=KeepFromSnapshot(2),
    )
    kept = dataclasses.replace(LEDGER, name=f"kept{run}", snapshot=SnapshotPolicy(every_n_events=5))
    settings = RetentionSettings(every_s=0.5, rows_per_s=None)
    name = f"ret{run}"
    store = StoreSpec.for_cassandra(config, create_schema=True)
    system = await asyncio.to_thread(
        System.start, name, store=store, types=[cleaned, kept], retention=settings
    )
    session = await CassandraSession.open(config)
    try:
        # a second driver joins the same system: still one cleaner
        await asyncio.to_thread(
            System.start, name, store=store, types=[cleaned, kept], retention=settings
        )
        ns = system.spec.namespace
        assert [n for n, _ in named_actors(ns, retention_service_name(name))] == [
            retention_service_name(name)
        ]

        def load() -> None:
            for agg in (cleaned, kept):
                for eid in ("a", "b"):
                    ref = system.entity(agg, eid)
                    for i in range(1, 14):  # snapshots at 5 and 10: the mark is 5
                        ref.ask(Append(f"{eid}{i}", i), timeout=60)

        await asyncio.to_thread(load)
        deadline = time.monotonic() + 180
        pids = [cleaned.persistence_id(e) for e in ("a", "b")]
        while [await rows_of(session, config, p) for p in pids] != [list(range(6, 14))] * 2:
            assert time.monotonic() < deadline, [await rows_of(session, config, p) for p in pids]
            await asyncio.sleep(0.5)
        for eid in ("a", "b"):  # the keep-all type is untouched
            assert await rows_of(session, config, kept.persistence_id(eid)) == list(range(1, 14))
        info = await asyncio.to_thread(system.retention_info)
        assert info is not None and info["types"] == [cleaned.name]
        assert info["rows_deleted"][cleaned.name] == 10 and info["error"] is None
        # the live aggregates keep answering and writing (above the mark)
        ref = system.entity(cleaned, "a")
        assert await asyncio.to_thread(ref.ask, GetBalance(), timeout=60) == sum(range(1, 14))
        await asyncio.to_thread(ref.ask, Append("a14", 1), timeout=60)
        assert await rows_of(session, config, pids[0]) == list(range(6, 15))
    finally:
        await asyncio.to_thread(system.shutdown)
        await session.close()
    assert named_actors(ns, retention_service_name(name)) == []  # stopped with the system
