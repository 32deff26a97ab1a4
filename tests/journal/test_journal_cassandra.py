"""Cassandra-specific journal behaviour on a real node: session, config/schema, streaming of a
100k-event history, tag-row re-writes. (The shared contract lives in tests/contract.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime

import pytest

from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.schema import create_schema, schema_cql
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import ConfigError, JournalError, JournalUnavailableError
from raysource.journal.memory import InMemoryJournal

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(pid: str, seq: int, tags=(), size: int = 40) -> StoredEvent:
    return StoredEvent(
        pid, seq, (b"%d:" % seq).ljust(size, b"x"), "t.E#1", 1, T0, "w", frozenset(tags)
    )


# ---------------------------------------------------------------- config and schema (no node)


@pytest.mark.parametrize("bad", ["", "1abc", "ks; DROP KEYSPACE x", "a-b", "x" * 49, "ks.t"])
def test_invalid_names_are_config_errors(bad):
    with pytest.raises(ConfigError):
        CassandraConfig(keyspace=bad)
    with pytest.raises(ConfigError):
        CassandraConfig(events_table=bad)


def test_config_validation_and_from_contact():
    cfg = CassandraConfig.from_contact("db.example:9142", keyspace="shop", partition_size=10)
    assert cfg.contact_points == ("db.example",) and cfg.port == 9142
    assert cfg.write_consistency == "LOCAL_QUORUM" and cfg.serial_consistency == "LOCAL_SERIAL"
    assert CassandraConfig.from_contact("h").port == 9042
    for kwargs in (
        {"partition_size": 0},
        {"write_consistency": "MOST"},
        {"serial_consistency": "QUORUM"},
        {"replication_strategy": "Nope"},
        {"replication_strategy": "NetworkTopologyStrategy"},
        {"username": "u"},
        {"eventual_consistency_delay": 1, "tag_write_budget": 2},
        {"port": 0},
    ):
        with pytest.raises(ConfigError):
            CassandraConfig(**kwargs)
    with pytest.raises(ConfigError):
        CassandraConfig.from_contact("host:notaport")


def test_schema_cql_for_operators():
    cql = schema_cql(
        CassandraConfig(
            keyspace="prod_ks",
            replication_strategy="NetworkTopologyStrategy",
            datacenters={"dc1": 3, "dc2": 3},
            local_dc="dc1",
        )
    )
    assert (
        "CREATE KEYSPACE IF NOT EXISTS prod_ks WITH replication = {'class': "
        "'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 3}" in cql
    )
    assert "PRIMARY KEY ((persistence_id, partition_nr), sequence_nr, epoch)" in cql
    assert "prod_ks.writer_fence" in cql and "prod_ks.writer_epochs" in cql
    assert "prod_ks.tag_views" in cql and "prod_ks.snapshots" in cql
    assert "PRIMARY KEY ((type_name, shard, bucket), due_ms, persistence_id, name, timer_id)" in cql
    assert "prod_ks.subject_keys" in cql and "prod_ks.subject_forget_signals" in cql
    assert "prod_ks.retention_progress" in cql
    # + fence, epochs, projection_offsets/_parked/_versions/_effects, timers, cursors, subject
    # keys, forget signals, retention_progress
    assert cql.count(";") == 17


# ---------------------------------------------------------------- session (real node)


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        request_timeout=30.0,
        fetch_size=1000,
        eventual_consistency_delay=0.4,
    )


@pytest.fixture
async def session(config):
    s = await CassandraSession(config).connect(keyspace="")
    await create_schema(s, config, keyspace=False)
    yield s
    await s.close()


@pytest.mark.cassandra
async def test_session_select_and_stream(session, config):
    ks = config.keyspace
    await session.execute(
        f"CREATE TABLE IF NOT EXISTS {ks}.kv (k text, n int, v text, PRIMARY KEY (k, n))",
        prepare=False,
    )
    ins = f"INSERT INTO {ks}.kv (k, n, v) VALUES (?, ?, ?)"
    await asyncio.gather(*(session.execute(ins, ("a", i, f"v{i}")) for i in range(25)))
    row = await session.select_one(f"SELECT v FROM {ks}.kv WHERE k = ? AND n = ?", ("a", 3))
    assert row.v == "v3"
    assert await session.select_one(f"SELECT v FROM {ks}.kv WHERE k = ?", ("zz",)) is None
    rows = await session.select_all(f"SELECT n FROM {ks}.kv WHERE k = ?", ("a",))
    assert [r.n for r in rows] == list(range(25))
    streamed = [
        r.n
        async for r in session.stream(f"SELECT n FROM {ks}.kv WHERE k = ?", ("a",), fetch_size=4)
    ]
    assert streamed == list(range(25))
    with pytest.raises(JournalError) as ei:
        await session.execute(f"SELECT nope FROM {ks}.missing_table")
    assert ei.value.__cause__ is not None


@pytest.mark.cassandra
async def test_connect_never_blocks_the_loop(config, monkeypatch):
    """Cluster.connect() runs in the pool: made to wait for something only the event loop can
    do, it finishes (on the loop's thread it would wait out its 10 s and fail the connect)."""
    import threading

    from cassandra.cluster import Cluster

    loop_ran = threading.Event()
    real_connect = Cluster.connect

    def connect_after_the_loop_ran(self, *args, **kwargs):
        if not loop_ran.wait(timeout=10):
            raise RuntimeError("the event loop did not run while Cluster.connect() ran")
        return real_connect(self, *args, **kwargs)

    monkeypatch.setattr(Cluster, "connect", connect_after_the_loop_ran)

    async def mark() -> None:
        await asyncio.sleep(0)
        loop_ran.set()

    t = asyncio.create_task(mark())
    s = CassandraSession(config)
    await s.connect()
    await t
    await s.close()
    assert loop_ran.is_set()


async def test_unreachable_cluster_is_journal_unavailable():
    cfg = CassandraConfig.from_contact("127.0.0.1:1", connect_timeout=1.0)
    with pytest.raises(JournalUnavailableError) as ei:
        await CassandraSession(cfg).connect()
    assert ei.value.__cause__ is not None


@pytest.mark.cassandra
async def test_client_timeout_is_journal_unavailable(session, config):
    """A tiny client-side timeout on a full scan surfaces as exactly JournalUnavailableError: a
    read writes nothing, so not the unknown outcome (its subclass); the driver's cause kept."""
    from cassandra import OperationTimedOut

    with pytest.raises(JournalUnavailableError) as info:
        for _ in range(20):
            await session.execute(
                f"SELECT * FROM {config.keyspace}.{config.events_table}", timeout=1e-6
            )
    assert type(info.value) is JournalUnavailableError, repr(info.value)
    assert isinstance(info.value.__cause__, OperationTimedOut), repr(info.value.__cause__)


# ---------------------------------------------------------------- journal specifics


@pytest.mark.cassandra
async def test_replay_of_100k_events_streams(session, config):
    """Seed 100k events fast (guard off, 500-event groups), then replay: the first event arrives
    after two page requests, long before the history is read, and paging stays one page ahead."""
    cfg = config.with_(fencing=False, partition_size=5000, fetch_size=1000)
    j = CassandraJournal(session, cfg)
    pid = "big-history"
    n, g = 100_000, 500
    sem = asyncio.Semaphore(8)

    async def put(first: int) -> None:
        async with sem:
            await j.append([ev(pid, s) for s in range(first, first + g)])

    t0 = time.perf_counter()
    await asyncio.gather(*(put(f) for f in range(1, n + 1, g)))
    seeded = time.perf_counter() - t0
    assert await j.highest_sequence_nr(pid) == n

    calls = 0
    real = session.execute_async

    def counting(*a, **kw):
        nonlocal calls
        calls += 1
        return real(*a, **kw)

    session.execute_async = counting  # type: ignore[method-assign]
    try:
        it = j.replay(pid)
        first = await it.__anext__()
        calls_at_first = calls
        expected, count = 2, 1
        assert first.sequence_nr == 1
        async for e in it:
            assert e.sequence_nr == expected
            expected += 1
            count += 1
            if count == 50_000:
                assert calls < n // 1000  # still paging, not everything fetched
    finally:
        session.execute_async = real  # type: ignore[method-assign]
    assert count == n
    # metadata read + epoch head record + fence read (a stable view) + first page + prefetch
    # of the second
    assert calls_at_first <= 5
    assert calls >= n // 1000  # one request per page of 1000 rows
    print(f"seeded {n} events in {seeded:.1f} s; replay used {calls} requests")


async def test_memory_replay_of_100k_events_is_lazy():
    j = InMemoryJournal(fencing=False, page_size=256)
    for first in range(1, 100_001, 1000):
        await j.append([ev("p", s) for s in range(first, first + 1000)])
    it = j.replay("p")
    assert (await it.__anext__()).sequence_nr == 1
    assert sum([1 async for _ in it]) == 99_999


@pytest.mark.cassandra
async def test_slow_tag_write_is_rewritten_before_ack(session, config):
    """A tag write slower than the budget is re-written with a fresh timestamp before the append
    returns; readers see the event once per query (duplicates are at-least-once across queries)."""
    cfg = config.with_(eventual_consistency_delay=0.4, tag_write_budget=0.1)
    j = CassandraJournal(session, cfg)
    await j._prepare()
    tag_insert_id = j._ps["tag_insert"].query_id
    real = session.execute_batch
    slow_left = 1

    async def slow_batch(batch, *a, **kw):  # tag rows go in one batch per tag
        nonlocal slow_left
        is_tags = any(q == tag_insert_id for _, q, _ in batch._statements_and_parameters)
        if is_tags and slow_left > 0:
            slow_left -= 1
            await asyncio.sleep(0.25)
        return await real(batch, *a, **kw)

    session.execute_batch = slow_batch  # type: ignore[method-assign]
    tag = f"slow{time.time_ns()}"
    try:
        await j.append([ev("slowtag", 1, tags={tag})])
    finally:
        session.execute_batch = real  # type: ignore[method-assign]
    rows = await session.select_all(
        f"SELECT timestamp_us FROM {config.keyspace}.tag_views WHERE tag = ? AND bucket = ?",
        (tag, time.time_ns() // 1000 // 3_600_000_000),
    )
    assert len(rows) == 2  # the slow row and its re-write
    await asyncio.sleep(0.55)
    got = [t async for t in j.events_by_tag(tag)]
    assert [(t.event.persistence_id, t.event.sequence_nr) for t in got] == [("slowtag", 1)]

    # always too slow: the append is not acknowledged
    async def always_slow(batch, *a, **kw):
        if any(q == tag_insert_id for _, q, _ in batch._statements_and_parameters):
            await asyncio.sleep(0.15)
        return await real(batch, *a, **kw)

    session.execute_batch = always_slow  # type: ignore[method-assign]
    try:
        with pytest.raises(JournalUnavailableError):
            await j.append([ev("slowtag", 2, tags={tag})])
    finally:
        session.execute_batch = real  # type: ignore[method-assign]


@pytest.mark.cassandra
async def test_tag_rows_newer_than_the_delay_are_not_visible_yet(session, config):
    j = CassandraJournal(session, config.with_(eventual_consistency_delay=1.0))
    tag = f"fresh{time.time_ns()}"
    await j.append([ev("fresh", 1, tags={tag})])
    assert [t async for t in j.events_by_tag(tag)] == []
    await asyncio.sleep(1.1)
    assert len([t async for t in j.events_by_tag(tag)]) == 1


@pytest.mark.cassandra
@pytest.mark.parametrize("guard", ["per-append", "epoch"])
async def test_two_journal_instances_fence_each_other(session, config, guard):
    """Two activations with separate sessions (as on two nodes) race for one id. Per-append:
    exactly one wins. Epoch (claims made lazily by the appends): at most one wins, the loser
    is refused or fenced (outcome unknown), and the log holds whole groups of one writer."""
    other = await CassandraSession(config).connect()
    pid = f"dup-{guard}"
    try:
        cfg = config.with_(guard=guard)
        a, b = CassandraJournal(session, cfg), CassandraJournal(other, cfg)
        b_event = dataclasses.replace(ev(pid, 1), writer_id="w-b")  # another activation
        res = await asyncio.gather(
            a.append([ev(pid, 1), ev(pid, 2)]), b.append([b_event]), return_exceptions=True
        )
        names = sorted(type(r).__name__ for r in res)
        stored = [(e.sequence_nr, e.writer_id) async for e in b.replay(pid)]
        if guard == "per-append":
            assert names == ["ConcurrentWriteError", "NoneType"]
        else:
            assert names.count("NoneType") <= 1
            assert set(names) <= {"ConcurrentWriteError", "WriterFencedError", "NoneType"}
            for r, want in zip(res, ([(1, "w"), (2, "w")], [(1, "w-b")])):
                if r is None:
                    assert stored == want
        assert stored in ([], [(1, "w"), (2, "w")], [(1, "w-b")])
        assert await a.highest_sequence_nr(pid) == len(stored)
    finally:
        await other.close()


@pytest.mark.cassandra
@pytest.mark.parametrize("hint", [0, 1, None])
async def test_a_lost_or_stale_partition_hint_makes_the_scan_longer_never_wrong(
    session, config, hint
):
    """The partition hint (issue 23 item 9) is a lower bound: with its write lost (no hint, or
    one left behind at an older partition), the highest sequence number and the replay of an id
    spread over four partitions are still exact, read by a journal instance with no cache."""
    cfg = config.with_(guard="per-append", partition_size=3)
    pid = f"hint-{uuid.uuid4().hex[:6]}"
    writer = CassandraJournal(session, cfg)
    for group in ((1,), (2, 3), (4, 5, 6), (7,), (8, 9), (10,)):
        await writer.append([ev(pid, s) for s in group])
    table = f"{cfg.keyspace}.{cfg.metadata_table}"
    row = await session.select_one(
        f"SELECT partition_hint FROM {table} WHERE persistence_id = ?", (pid,)
    )
    assert row.partition_hint == 3  # the write path keeps it: the partition of #10
    await session.execute(
        f"UPDATE {table} SET partition_hint = ? WHERE persistence_id = ?", (hint, pid)
    )
    reader = CassandraJournal(session, cfg)
    assert await reader.highest_sequence_nr(pid) == 10
    assert [e.sequence_nr async for e in reader.replay(pid)] == list(range(1, 11))
    await reader.append([ev(pid, 11)])  # and the next append takes the next number
    assert await CassandraJournal(session, cfg).highest_sequence_nr(pid) == 11
