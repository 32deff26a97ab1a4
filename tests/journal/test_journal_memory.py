"""In-memory twin specifics: test hooks (latency, injected failures, counters, decode check)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from raysource.journal.api import StoredEvent, StoredSnapshot
from raysource.journal.errors import (
    CorruptPayloadError,
    JournalUnavailableError,
    UnknownManifestError,
)
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.snapshots.memory import InMemorySnapshotStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ev(pid: str, seq: int, payload: bytes = b"{}", manifest: str = "json#1") -> StoredEvent:
    return StoredEvent(pid, seq, payload, manifest, 1, NOW)


async def replay(j, pid):
    return [e async for e in j.replay(pid)]


async def test_injected_failure_before_write_stores_nothing():
    j = InMemoryJournal()
    j.fail_next_appends(2)
    for _ in range(2):
        with pytest.raises(JournalUnavailableError):
            await j.append([ev("p", 1)])
    assert await j.highest_sequence_nr("p") == 0 and j.write_count == 0
    await j.append([ev("p", 1)])
    assert j.write_count == 1 and j.stats["append"] == 3


async def test_injected_failure_after_write_is_outcome_unknown():
    j = InMemoryJournal()
    j.fail_next_appends(1, TimeoutError("lost ack"), after_write=True)
    with pytest.raises(TimeoutError):
        await j.append([ev("p", 1), ev("p", 2)])
    assert [e.sequence_nr for e in await replay(j, "p")] == [1, 2]


async def test_latency_is_applied_per_call():
    j = InMemoryJournal(latency=0.05)
    t0 = time.perf_counter()
    await j.append([ev("p", 1)])
    await j.highest_sequence_nr("p")
    assert time.perf_counter() - t0 >= 0.1


async def test_decode_check_with_serializer():
    ser = Serialization()

    @dataclass(frozen=True)
    class Added:
        n: int

    ser.register(Added, "t.Added")
    j = InMemoryJournal(serialization=ser)
    sid, manifest, payload = ser.encode(Added(1))
    await j.append([StoredEvent("p", 1, payload, manifest, sid, NOW)])
    with pytest.raises(UnknownManifestError) as ei:
        await j.append([ev("p", 2, b"{}", "t.Missing#1")])
    assert ei.value.sequence_nr == 2
    with pytest.raises(CorruptPayloadError):
        await j.append([ev("p", 2, b'{"n": "x"}', manifest)])
    assert await j.highest_sequence_nr("p") == 1


async def test_snapshot_store_hooks():
    s = InMemorySnapshotStore()
    s.fail_next_saves(1)
    snap = StoredSnapshot("p", 3, b"{}", "json#1", 1, NOW)
    with pytest.raises(JournalUnavailableError):
        await s.save(snap)
    assert await s.load("p") is None
    await s.save(snap)
    assert s.save_count == 1 and await s.load("p") == snap
