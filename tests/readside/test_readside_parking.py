"""The read side on the in-memory journal and offset store (no Cassandra, no Ray): batches,
parked aggregate streams (park, retry, skip, across a restart), and exactly-once view
contents across a restart mid-stream.

The handler is an idempotent, batching in-memory "view" (a per-aggregate high-water mark,
like ``EffectivelyOnceView``) that counts every application and fails on poison events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import pytest

from raysource.examples.seats import SHOW, ReserveSeat, seat_label
from raysource.journal.memory import InMemoryJournal
from raysource.readside.errors import ProjectionError
from raysource.readside.offsets import InMemoryOffsetStore
from raysource.readside.projections import ProjectionHandler, ProjectionSettings, ProjectionSpec
from raysource.readside.worker import ProjectionWorker
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.testkit import AggregateTestKit

SETTINGS = ProjectionSettings(
    poll_interval=0.02,
    commit_every=5,
    commit_interval=0.05,
    retry_attempts=2,
    retry_backoff=0.01,
    retry_backoff_max=0.02,
    batch_size=7,
    live=False,
)


class MemoryView(ProjectionHandler):
    """Idempotent batching view: ``rows`` (customer, show, seat), per-pid marks, and how often
    each (pid, seq) was applied. Events of customers in ``poison`` fail."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self.applied: Counter = Counter()
        self.rows: set[tuple[str, str, str]] = set()
        self.poison: set[str] = set()
        self.batches: list[int] = []

    async def handle_batch(self, envelopes) -> None:
        self.batches.append(len(envelopes))
        for env in envelopes:
            if env.sequence_nr <= self.marks.get(env.persistence_id, 0):
                continue
            if env.event.customer in self.poison:
                raise RuntimeError(f"poison {env.event.customer}")
            self.rows.add((env.event.customer, env.persistence_id, env.event.seat))
            self.marks[env.persistence_id] = env.sequence_nr
            self.applied[(env.persistence_id, env.sequence_nr)] += 1
            await asyncio.sleep(0)


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def write(journal, show: str, customers, first_seat: int = 0) -> None:
    kit = AggregateTestKit(
        SHOW,
        entity_id=show,
        journal=journal,
        snapshot_store=InMemorySnapshotStore(),
        roundtrip=False,
    )
    for i, c in enumerate(customers, start=first_seat):
        assert (await kit.arun(ReserveSeat(seat_label(i), c))).ok
    await kit.aclose()


def worker_on(journal, store, view, spec=None) -> ProjectionWorker:
    spec = spec or ProjectionSpec("mem", "show", lambda s, c: view, (SHOW,), 1, SETTINGS)
    return ProjectionWorker(spec, 0, None, None, journal, offsets=store, handler=view)


async def test_poison_parks_its_aggregate_only_survives_restart_then_retry_and_skip():
    journal, store, view = InMemoryJournal(), InMemoryOffsetStore(), MemoryView()
    view.poison = {"bad", "worse"}
    await write(journal, "p", ["a", "b", "bad", "c", "d"])
    await write(journal, "q", ["a", "b", "c", "d", "e", "f"])
    await write(journal, "r", ["a", "worse", "b"])
    p, q, r = (SHOW.persistence_id(x) for x in "pqr")
    worker = worker_on(journal, store, view)
    await worker.boot()
    await worker.start()
    await until(lambda: len(worker.parked) == 2 and view.marks.get(q) == 6, 5, "two parks")
    st = await worker.status()
    assert st["state"] == "running" and st["lag_events"] == 0
    assert [(x["persistence_id"], x["sequence_nr"]) for x in st["parked"]] == [(p, 3), (r, 2)]
    assert "poison bad" in st["parked"][0]["error"]
    assert view.marks == {p: 2, q: 6, r: 1}, "only the poison aggregates stopped"
    assert max(view.batches) == 7 and view.batches.count(1) >= 2, "batches, then one by one"
    await write(journal, "q", ["g"], first_seat=6)  # q's new events flow while p and r stay parked
    await until(lambda: view.marks.get(q) == 7, 5, "q's event after the park")
    assert view.marks[p] == 2 and st["parked_passed_over"] >= 3
    await worker.stop()

    # a restart keeps the parked streams (the offset is past their events)
    view2 = MemoryView()
    view2.marks, view2.applied, view2.poison = view.marks, view.applied, {"bad", "worse"}
    worker = worker_on(journal, store, view2)
    await worker.boot()
    await worker.start()
    assert [x.persistence_id for x in worker.parked.records()] == [p, r]
    with pytest.raises(ProjectionError, match="not parked"):
        await worker.retry(q)
    out = await worker.retry(p)  # still poisoned: parks again at the same event
    assert out == {
        "persistence_id": p,
        "skipped": None,
        "applied": 0,
        "parked": {**out["parked"], "sequence_nr": 3},
    }
    view2.poison = {"worse"}  # p's handler is "fixed"; r's event is skipped instead
    assert (await worker.retry(p))["applied"] == 3
    assert (await worker.retry(r, skip=True))["applied"] == 1
    assert view2.marks == {p: 5, q: 7, r: 3} and worker.parked.records() == []
    assert await store.parked("mem") == []
    assert (r, 2) not in view2.applied, "the skipped event was never applied"
    await asyncio.sleep(0.1)
    assert set(view2.applied.values()) == {1}, "nothing applied twice"
    assert len(view2.applied) == 5 + 7 + 2
    await worker.stop()


async def test_restart_mid_stream_on_the_memory_journal_applies_everything_exactly_once():
    journal, store, view = InMemoryJournal(), InMemoryOffsetStore(), MemoryView()
    shows = [f"m{i}" for i in range(6)]
    stop_writing = asyncio.Event()

    async def writer(show: str) -> int:
        kit = AggregateTestKit(
            SHOW,
            entity_id=show,
            journal=journal,
            snapshot_store=InMemorySnapshotStore(),
            roundtrip=False,
        )
        n = 0
        while not stop_writing.is_set() and n < 100:
            assert (await kit.arun(ReserveSeat(seat_label(n), "c"))).ok
            n += 1
            await asyncio.sleep(0.001)
        await kit.aclose()
        return n

    writers = [asyncio.ensure_future(writer(s)) for s in shows]
    for _ in range(3):  # stop and restart the worker three times while writers run
        worker = worker_on(journal, store, view)
        await worker.boot()
        await worker.start()
        await asyncio.sleep(0.15)
        await worker.stop()
    stop_writing.set()
    counts = await asyncio.gather(*writers)
    worker = worker_on(journal, store, view)
    await worker.boot()
    await worker.start()
    expected = {(SHOW.persistence_id(s), n) for s, c in zip(shows, counts) for n in range(1, c + 1)}
    await until(lambda: set(view.applied) >= expected, 10, "every event")
    await worker.stop()
    assert set(view.applied) == expected and set(view.applied.values()) == {1}
    assert view.rows == {
        ("c", SHOW.persistence_id(s), seat_label(n))
        for s, c in zip(shows, counts)
        for n in range(c)
    }
    row = await store.load("mem", "0/1")
    assert row is not None and row.state == "stopped" and row.offset is not None


def test_settings_refuse_bad_batch_and_buffer_sizes():
    from raysource.journal.errors import ConfigError

    for bad in (dict(batch_size=0), dict(live_buffer=0)):
        with pytest.raises(ConfigError, match="batch_size and live_buffer"):
            dataclasses.replace(SETTINGS, **bad)


class _FlakyStore(MemoryView):
    """A view whose store is unreachable for its first ``outage`` batches."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    async def handle_batch(self, envelopes) -> None:
        from raysource.journal.errors import JournalUnavailableError

        if self.outage > 0:
            self.outage -= 1
            raise JournalUnavailableError("injected: view store unavailable")
        await super().handle_batch(envelopes)


async def test_a_view_store_outage_is_retried_from_the_offset_and_parks_nothing():
    journal, store, view = InMemoryJournal(), InMemoryOffsetStore(), _FlakyStore(outage=6)
    await write(journal, "o", ["a", "b", "c", "d"])
    worker = worker_on(journal, store, view)
    await worker.boot()
    await worker.start()
    try:
        seen_error = []

        def done() -> bool:
            if worker.error:
                seen_error.append(worker.error)
            return view.marks.get(SHOW.persistence_id("o")) == 4

        await until(done, 10, "the events after the outage")
        assert any("view store unavailable" in e for e in seen_error)
        assert worker.parked.records() == [] and worker.retries == 0
        assert set(view.applied.values()) == {1} and len(view.applied) == 4
    finally:
        await worker.stop()


async def test_an_event_that_does_not_decode_parks_its_aggregate_only():
    """Events are decoded as they are read, a batch ahead; one that does not decode is not
    dropped there: delivery decodes it again, retries, and parks its aggregate at it, while
    every other aggregate's events (decoded ahead) are applied exactly once."""
    from datetime import UTC, datetime

    from raysource.examples.seats import SeatReserved
    from raysource.journal.api import StoredEvent
    from raysource.journal.serialization import Serialization

    journal, store, view = InMemoryJournal(), InMemoryOffsetStore(), MemoryView()
    await write(journal, "p", ["a", "b"])
    ser = Serialization()
    SHOW.register_types(ser)
    u = SHOW.persistence_id("u")
    sid, manifest, payload = ser.encode(SeatReserved("A1", "a"), persistence_id=u, sequence_nr=1)
    tags = frozenset({"show"})
    now = datetime.now(UTC)
    await journal.append([StoredEvent(u, 1, payload, manifest, sid, now, "t", tags)])
    await journal.append([StoredEvent(u, 2, b"\xffnot a payload", manifest, sid, now, "t", tags)])
    await write(journal, "q", ["a", "b", "c"])
    p, q = SHOW.persistence_id("p"), SHOW.persistence_id("q")
    worker = worker_on(journal, store, view)
    await worker.boot()
    await worker.start()
    await until(lambda: len(worker.parked) == 1 and view.marks.get(q) == 3, 5, "a park")
    st = await worker.status()
    assert [(x["persistence_id"], x["sequence_nr"]) for x in st["parked"]] == [(u, 2)]
    assert view.marks == {p: 2, u: 1, q: 3}
    assert set(view.applied.values()) == {1} and len(view.applied) == 6
    await worker.stop()
