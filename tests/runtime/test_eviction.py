"""Passivation that keeps up.

* The region's cap on dedicated activations (``max_active_per_node``) evicts in the
  background: the activation that crossed the cap returns while the evicted actors' stops
  are still pending (they are held here until the test releases them), the least recently
  activated go first, each once, and evictions due while a batch is running form the next
  batch.
* A host's ``max_active`` cap takes the victims out of the table synchronously, so a burst of
  activations finishing together evicts exactly the excess (each victim once), least
  recently used first, skipping entities with a call in flight.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.host import AggregateHost
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.sharding.region import ShardRegion, SystemSpec
from raysource.snapshots.memory import InMemorySnapshotStore

SER = serialization_for(LEDGER, StoreSpec())


class _Handle:
    """A dedicated host actor stand-in whose passivation waits for ``release``."""

    def __init__(self, name: str, log: list[str], release: asyncio.Event) -> None:
        self.name, self.log, self.release = name, log, release
        self.passivate = self

    def remote(self) -> asyncio.Future:
        self.log.append(self.name)
        return asyncio.ensure_future(self.release.wait())


async def _until(cond) -> None:
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


async def test_region_evicts_in_the_background_in_batches():
    region = ShardRegion(SystemSpec("s", StoreSpec(), (LEDGER,), max_active_per_node=3), "n1")
    release, sent = asyncio.Event(), []
    region._dedicated = OrderedDict((f"a{i}", _Handle(f"a{i}", sent, release)) for i in range(8))
    await asyncio.wait_for(region._enforce_cap(), 30)  # returns; no passivation finished
    assert list(region._dedicated) == ["a5", "a6", "a7"]
    await _until(lambda: len(sent) >= 5)
    assert sent == ["a0", "a1", "a2", "a3", "a4"] and not release.is_set()
    for i in range(8, 10):  # two more activations while the first batch is stuck
        region._dedicated[f"a{i}"] = _Handle(f"a{i}", sent, release)
        await asyncio.wait_for(region._enforce_cap(), 30)
    assert list(region._dedicated) == ["a7", "a8", "a9"] and region.evictions == 7
    release.set()
    assert region._evictor is not None
    await _until(lambda: region._evictor is not None and region._evictor.done())
    assert sorted(sent) == [f"a{i}" for i in range(7)] and len(sent) == 7
    assert region.eviction_batches == 2
    assert (await region.info())["evicting"] == 0


@pytest.mark.parametrize("busy", [False, True])
async def test_host_cap_evicts_exactly_the_excess_of_a_burst(busy):
    """Five idle aggregates at the cap; five commands to new ones at once: exactly the five
    idle ones are evicted, each once, none of the new ones; with a call in flight on the least
    recently used one, it is evicted last (after its call)."""
    host = AggregateHost(LEDGER, InMemoryJournal(), InMemorySnapshotStore(), SER, max_active=5)
    evicted: list[str] = []
    host._on_deactivated = lambda eid, reason: evicted.append(eid)
    for i in range(5):
        await host.ask(f"e{i}", Append(f"op{i}"))
    gate = asyncio.Event()
    slow = None
    if busy:
        core = host.core("e0")
        assert core is not None
        inner = core.journal

        class Held:  # the journal, with an append that waits for the gate
            def __getattr__(self, name):
                return getattr(inner, name)

            async def append(self, events):
                await gate.wait()
                await inner.append(events)

        core.journal = Held()  # type: ignore[assignment]
        slow = asyncio.ensure_future(host.ask("e0", Append("op-slow")))
        await _until(lambda: core.queued == 0 and not core.idle)
    replies = await asyncio.gather(*(host.ask(f"n{i}", Append(f"n-op{i}")) for i in range(5)))
    assert replies == [1] * 5
    await _until(lambda: not host._stopping or busy)
    if busy:
        assert evicted[:4] == ["e1", "e2", "e3", "e4"] and evicted[4:] == ["e0"]
        gate.set()
        assert await slow == 2
    else:
        assert evicted == [f"e{i}" for i in range(5)]
    await _until(lambda: not host._stopping)
    assert sorted(host.active) == [f"n{i}" for i in range(5)]
    await host.close()


async def test_activate_many_beyond_the_cap_does_not_thrash():
    """A warm-up of more aggregates than the cap activates each once (the cap then keeps the
    most recent ones); it never re-activates one its batch-mates evicted."""
    host = AggregateHost(LEDGER, InMemoryJournal(), InMemorySnapshotStore(), SER, max_active=4)
    failed = await host.activate_many([f"w{i}" for i in range(12)])
    assert failed == {}
    await _until(lambda: not host._stopping)
    assert host.stats.activations == 12 and len(host.active) == 4
    await host.close()
