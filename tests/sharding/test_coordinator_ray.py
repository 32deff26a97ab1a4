"""The coordinator as a detached, restartable Ray actor on a small multi-node local cluster.

The module runs its own ``ray.cluster_utils.Cluster`` (head + workers, 1 CPU each, fast health
checks so a crashed node is noticed in ~2 s). If the session's local Ray is up it is shut down
first and re-initialized in its namespace afterwards, so test order does not matter.

The coordinator's journal must outlive the coordinator process (Ray re-runs ``__init__`` on
restart), so it is an ``InMemoryJournal`` inside a separate store actor, reached through a small
``Journal`` proxy; in production the factory builds a Cassandra journal instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence

import pytest

ray = pytest.importorskip("ray")

from ray_cluster import ray_cluster  # noqa: E402

from raysource.journal.api import Journal, StoredEvent  # noqa: E402
from raysource.journal.memory import InMemoryJournal  # noqa: E402
from raysource.sharding.allocation import ShardId  # noqa: E402
from raysource.sharding.coordinator import CoordinatorSettings  # noqa: E402
from raysource.sharding.coordinator_state import coordinator_persistence_id  # noqa: E402
from raysource.sharding.ray_nodes import (  # noqa: E402
    get_coordinator,
    get_or_create_coordinator,
    live_nodes,
    node_affinity,
    stop_coordinator,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]

# Classes below are shipped to Ray workers, which cannot import this test module by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SYSTEM = "shardtest"


class JournalStore:
    """A Ray actor holding an in-memory journal, so it survives coordinator restarts."""

    def __init__(self) -> None:
        self.journal = InMemoryJournal()

    async def append(self, events: list[StoredEvent]) -> None:
        await self.journal.append(events)

    async def replay(self, pid: str, from_nr: int, to_nr: int | None) -> list[StoredEvent]:
        return [ev async for ev in self.journal.replay(pid, from_nr, to_nr)]

    async def highest(self, pid: str) -> int:
        return await self.journal.highest_sequence_nr(pid)

    def manifests(self, pid: str) -> list[str]:
        return [ev.manifest.split(".")[-1].split("#")[0] for ev in self.journal.events(pid)]


class StoreJournal(Journal):
    """Journal proxy to a :class:`JournalStore` actor (append/replay/highest only)."""

    def __init__(self, store) -> None:
        self.store = store

    async def append(self, events: Sequence[StoredEvent]) -> None:
        await self.store.append.remote(list(events))

    async def replay(
        self, persistence_id, from_sequence_nr=1, to_sequence_nr=None
    ) -> AsyncIterator[StoredEvent]:
        for ev in await self.store.replay.remote(persistence_id, from_sequence_nr, to_sequence_nr):
            yield ev

    async def highest_sequence_nr(self, persistence_id: str) -> int:
        return await self.store.highest.remote(persistence_id)

    async def delete_to(self, persistence_id, to_sequence_nr) -> None:
        raise NotImplementedError

    def events_by_tag(self, tag, after=None, *, limit=None):
        raise NotImplementedError


class Region:
    """A shard region stand-in that records handoffs."""

    def __init__(self) -> None:
        self.handed_off: list[ShardId] = []

    def handoff(self, shard: ShardId) -> None:
        self.handed_off.append(shard)

    def calls(self) -> list[ShardId]:
        return self.handed_off


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(1, "raysource-sharding-test") as (c, [worker], _):
        yield c, worker


@pytest.fixture(scope="module")
def system(cluster):
    """(coordinator handle, store handle, head node id) with the table built by the first test."""
    head = ray.get_runtime_context().get_node_id()
    pin = node_affinity(head)  # on the head: the tests remove worker nodes
    store = ray.remote(JournalStore).options(**pin).remote()
    settings = CoordinatorSettings(poll_interval=0.2, max_moves=1)
    coord = get_or_create_coordinator(
        SYSTEM, lambda: StoreJournal(store), settings, actor_options=pin
    )
    yield coord, store, head
    assert stop_coordinator(SYSTEM)
    ray.kill(store)


def table(coord) -> dict[str, list[ShardId]]:
    return ray.get(coord.allocation.remote(), timeout=30)


def test_allocates_to_live_nodes_and_survives_restart(system) -> None:
    coord, store, _ = system
    ray.get(coord.register_type.remote("seats", 6), timeout=60)
    homes = ray.get([coord.home.remote("seats", s) for s in range(6)], timeout=30)
    live = live_nodes()
    assert len(live) == 2 and set(homes) == set(live)
    before = table(coord)
    assert sorted(len(v) for v in before.values()) == [3, 3]

    old = ray.get(coord.describe.remote())["instance"]
    ray.kill(coord, no_restart=False)  # asynchronous: wait for a new instance, not any answer
    wait_until(
        lambda: (
            (_try(lambda: ray.get(coord.describe.remote(), timeout=10)) or {}).get("instance")
            not in (None, old)
        ),
        60,
        "coordinator restart",
    )
    assert table(coord) == before
    # get-or-create finds the restarted instance instead of making a second one
    again = get_or_create_coordinator(SYSTEM, lambda: None)
    assert ray.get(again.home.remote("seats", 0)) == homes[0]
    assert get_coordinator(SYSTEM) is not None


def _try(fn):
    try:
        return fn()
    except (
        ray.exceptions.RayActorError,
        ray.exceptions.ActorUnavailableError,
        ray.exceptions.GetTimeoutError,
    ):
        return None


def test_join_triggers_bounded_rebalance_with_handoff(cluster, system) -> None:
    c, _ = cluster
    coord, store, head = system
    regions = {}
    for node in live_nodes():
        regions[node] = ray.remote(Region).options(**node_affinity(node)).remote()
        ray.get(coord.register_region.remote(node, regions[node]))
    pid = coordinator_persistence_id(SYSTEM)
    moved_before = ray.get(store.manifests.remote(pid)).count("ShardMoved")

    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    wait_until(
        lambda: sorted(len(v) for v in table(coord).values()) == [2, 2, 2], 30, "rebalance to 2/2/2"
    )
    moves = ray.get(store.manifests.remote(pid)).count("ShardMoved") - moved_before
    assert moves == 2  # the minimum for 3/3/0 -> 2/2/2, one per round (max_moves=1)
    handed = sum(len(ray.get(r.calls.remote())) for r in regions.values())
    assert handed == moves  # every move was preceded by a handoff on its old node
    for r in regions.values():
        ray.kill(r)


def test_crashed_node_shards_reallocated(cluster, system) -> None:
    c, worker = cluster
    coord, _, head = system
    victim = worker.node_id
    assert table(coord).get(victim), "the first worker should hold shards"
    c.remove_node(worker, allow_graceful=False)  # a crash: Ray's health check must notice
    started = time.monotonic()
    final = wait_until(
        lambda: (t := table(coord)) and victim not in t and t,
        30,
        "re-allocation of the dead node's shards",
    )
    elapsed = time.monotonic() - started
    live = set(live_nodes())
    assert victim not in live and set(final) <= live
    assert sorted(s for v in final.values() for s in v) == [ShardId("seats", i) for i in range(6)]
    print(f"dead node's shards re-allocated {elapsed:.1f}s after the crash")
