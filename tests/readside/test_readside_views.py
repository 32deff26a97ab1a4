"""``EffectivelyOnceView.apply_batch`` on a real Cassandra node: a run of events in few logged
batches, in order per row, exactly once across a failure part-way and a redelivery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from raysource.examples.seats import ReservationCancelled, SeatReserved
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import JournalError
from raysource.readside.projections import EventEnvelope
from raysource.readside.views import EffectivelyOnceView

pytestmark = pytest.mark.cassandra

NOW = datetime.now(UTC)


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)
    async with CassandraSession(config) as s:
        yield s


def env(pid: str, seq: int, event) -> EventEnvelope:
    return EventEnvelope(event, pid, seq, NOW)


async def make_view(session, keyspace: str, **kw):
    view = f"v{uuid.uuid4().hex[:8]}"
    await session.execute(
        f"CREATE TABLE {keyspace}.{view} (customer text, show text, "
        "seat text, PRIMARY KEY ((customer), show, seat))",
        prepare=False,
        timeout=60.0,
    )
    writer = EffectivelyOnceView(session, keyspace, view, audit=True, **kw)
    await writer.create_tables()
    ins = await session.prepare(
        f"INSERT INTO {keyspace}.{view} (customer, show, seat) VALUES (?, ?, ?)"
    )
    dele = await session.prepare(
        f"DELETE FROM {keyspace}.{view} WHERE customer = ? AND show = ? AND seat = ?"
    )

    def items(envs):
        out = []
        for e in envs:
            m = ins if isinstance(e.event, SeatReserved) else dele
            out.append((e, [(m, (e.event.customer, e.persistence_id, e.event.seat))]))
        return out

    async def rows():
        got = await session.select_all(
            f"SELECT customer, show, seat FROM {keyspace}.{view}", profile=RAW_PROFILE
        )
        return {tuple(r) for r in got}

    return writer, items, rows


def stream(pids, per_pid: int):
    """Interleaved per-pid streams that reserve, cancel and re-reserve the same seats."""
    out = []
    for n in range(1, per_pid + 1):
        for pid in pids:
            seat = f"A{(n - 1) // 3 + 1}"
            ev = (
                SeatReserved(seat, "ann")
                if n % 3 == 1
                else ReservationCancelled(seat, "ann")
                if n % 3 == 2
                else SeatReserved(seat, "bo")
            )
            out.append(env(pid, n, ev))
    return out


def fold(envs) -> set:
    rows = set()
    for e in envs:
        key = (e.event.customer, e.persistence_id, e.event.seat)
        rows.add(key) if isinstance(e.event, SeatReserved) else rows.discard(key)
    return rows


@pytest.mark.parametrize("keyed", [False, True], ids=["by-pid", "by-seat"])
async def test_a_run_of_events_lands_in_few_batches_in_order_exactly_once(
    session, cassandra_keyspace, keyed
):
    key = (lambda e: (e.persistence_id, e.event.seat)) if keyed else None
    writer, items, rows = await make_view(
        session, cassandra_keyspace, conflict_key=key, max_batch=16
    )
    envs = stream([f"show|{i}" for i in range(20)], 9)  # 180 events
    assert await writer.apply_batch(items(envs)) == 180
    assert await rows() == fold(envs), "each row's events applied in their order"
    assert writer.batches <= (9 * 2 if keyed else 9) * 2, writer.batches  # not 180
    assert await writer.apply_batch(items(envs)) == 0, "a redelivery writes nothing"
    counts = await writer.applied_counts()
    assert len(counts) == 180 and set(counts.values()) == {1}
    assert await writer.stored_watermarks() == {f"show|{i}": 9 for i in range(20)}


async def test_a_failure_part_way_leaves_a_prefix_and_a_redelivery_applies_the_rest(
    session, cassandra_keyspace
):
    writer, items, rows = await make_view(session, cassandra_keyspace, max_batch=8)
    envs = stream([f"show|f{i}" for i in range(6)], 6)  # 36 events, 6 layers of 6
    good = items(envs)
    bad = list(good)
    poison = 6 * 3 + 2  # an event of the 4th layer: its statement is refused by Cassandra
    e, _ = bad[poison]
    bad[poison] = (e, [(f"INSERT INTO {cassandra_keyspace}.nope (x) VALUES (?)", (1,))])
    with pytest.raises(JournalError):
        await writer.apply_batch(bad)
    marks = await writer.stored_watermarks()
    assert sorted(marks.values()) == [3] * 6, "layers 1-3 landed whole, the 4th not at all"
    assert await rows() == fold([x for x in envs if x.sequence_nr <= 3])
    writer.forget_cache()
    assert await writer.apply_batch(good) == 18, "exactly the rest"
    assert await rows() == fold(envs)
    counts = await writer.applied_counts()
    assert len(counts) == 36 and set(counts.values()) == {1}


async def test_batches_are_bounded_in_bytes_and_events_and_stay_exactly_once(
    session, cassandra_keyspace
):
    """A batch holds at most ``max_batch`` events and at most ``max_batch_bytes`` of bound
    values (one event alone may be larger: it still lands); runs split that way still land
    in order, exactly once, and a redelivery writes nothing."""
    writer, items, rows = await make_view(
        session,
        cassandra_keyspace,
        conflict_key=lambda e: (e.persistence_id, e.event.seat),
        max_batch=12,
        max_batch_bytes=400,
    )
    audit_id = (await session.prepare(writer.cql.audit)).query_id
    sent: list[tuple[int, int]] = []  # per batch: (events, bytes of bound values)
    execute_batch = session.execute_batch

    async def recording(batch, **kw):
        parts = batch._statements_and_parameters
        events = sum(1 for _, query_id, _ in parts if query_id == audit_id)  # one per event
        size = sum(len(v) for _, _, params in parts for v in params if isinstance(v, bytes))
        sent.append((events, size))
        return await execute_batch(batch, **kw)

    session.execute_batch = recording
    envs = stream([f"show|b{i}" for i in range(10)], 9)  # 90 events, 3 layers of 30
    envs.insert(40, env("show|big", 1, SeatReserved("A1", "x" * 1000)))  # alone > 400 bytes
    assert await writer.apply_batch(items(envs)) == 91
    assert await rows() == fold(envs)
    assert sum(e for e, _ in sent) == 91
    assert all(e <= 12 and (size <= 400 or e == 1) for e, size in sent), sent
    assert max(e for e, _ in sent) < 12, f"the bytes bound split them, not max_batch: {sent}"
    assert await writer.apply_batch(items(envs)) == 0
    counts = await writer.applied_counts()
    assert len(counts) == 91 and set(counts.values()) == {1}
