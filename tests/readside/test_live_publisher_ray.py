"""The live path's bound (issue 23 item 9), on real Ray: a host's ``LivePublisher`` keeps at most
``max_in_flight`` (32) offers outstanding per projection worker. A worker that takes offers and
does not answer them gets exactly 32; the rest are dropped and counted (the durable tag query
covers them), never queued in Ray; once the worker answers, offers flow again."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from raysource.journal.api import StoredEvent
from raysource.runtime.actors.cluster import projection_name
from raysource.runtime.actors.live import LivePublisher

pytestmark = pytest.mark.ray

T0 = 1_700_000_000_000_000


async def _until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_offers_beyond_the_in_flight_bound_are_dropped_not_queued(ray_local) -> None:
    tag = f"live-bound-{uuid.uuid4().hex[:6]}"

    @ray_local.remote(num_cpus=0)
    class HeldWorker:
        """A projection worker's live surface: subscribes to ``tag``; holds every offer."""

        def __init__(self) -> None:
            self.offers = 0
            self.events = 0
            self.release = asyncio.Event()

        def subscription(self) -> tuple[str, int, int, bool]:
            return (tag, 0, 1, True)

        async def offer(self, events: list) -> None:
            self.offers += 1
            self.events += len(events)
            await self.release.wait()

        def counts(self) -> tuple[int, int]:
            return self.offers, self.events

        def open(self) -> None:
            self.release.set()

    worker = HeldWorker.options(
        name=projection_name(tag, 0, 1), max_concurrency=200, lifetime=None
    ).remote()
    try:
        assert await worker.counts.remote() == (0, 0)
        publisher = LivePublisher(refresh_s=3600.0)  # one listing, made below

        async def subscribed() -> bool:
            publisher.refresh()
            await publisher._refreshing
            return any(s.tag == tag for s in publisher._subs.values())

        await _until(subscribed, "the publisher to find the worker")

        def event(i: int) -> StoredEvent:
            return StoredEvent(f"a|{i}", 1, b"x", "t.E#1", 1, T0, "w", frozenset({tag}))

        for i in range(50):  # one offer per event-loop turn
            publisher.publish([event(i)])
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        async def routed() -> bool:
            return publisher.published + publisher.dropped == 50

        await _until(routed, "every event to be sent or dropped")
        assert (publisher.published, publisher.dropped) == (32, 18)

        async def delivered() -> bool:
            return await worker.counts.remote() == (32, 32)

        await _until(delivered, "the 32 outstanding offers to reach the worker")
        await worker.open.remote()
        sub = next(s for s in publisher._subs.values() if s.tag == tag)

        async def settled() -> bool:
            return sub.in_flight == 0

        await _until(settled, "the held offers to be answered")
        publisher.publish([event(50)])
        await _until(lambda: _equal(worker.counts.remote(), (33, 33)), "the next offer")
        assert (publisher.published, publisher.dropped) == (33, 18)
    finally:
        ray_local.kill(worker)


async def _equal(ref, want) -> bool:
    return await ref == want
