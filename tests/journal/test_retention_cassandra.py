"""Retention on real Cassandra (issue 27, item 1/3): a type that keeps its events back to the
2nd newest snapshot loses exactly the rows at or below it, recovers to the same state, a
projection that lagged still reads every event it had not read, the type that keeps
everything is untouched, ``verify`` proves it (and catches a row put back), and a cleaner killed
at any step resumes and deletes exactly what the policy says."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.api import StoredEvent, StoredSnapshot, TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.retention import RetentionCleaner
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.retention import KeepFromSnapshot
from raysource.readside.offsets import CassandraOffsetStore
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.cassandra import CassandraSnapshotStore

pytestmark = pytest.mark.cassandra

P = 4  # partition size: 23 events span six partitions
CLEANED = dataclasses.replace(
    LEDGER,
    name="retledger",
    snapshot=SnapshotPolicy(every_n_events=5, keep=2),
    retention=KeepFromSnapshot(2),
)
KEPT = dataclasses.replace(LEDGER, name="keptledger", snapshot=SnapshotPolicy(every_n_events=5))


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        partition_size=P,
        request_timeout=30.0,
        eventual_consistency_delay=0.4,
    )


@pytest.fixture
async def session(config):
    s = await CassandraSession.open(config, create_schema=True)
    yield s
    await s.close()


def core(agg, eid: str, session, config, writer: str) -> EntityCore:
    return EntityCore(
        agg,
        eid,
        CassandraJournal(session, config),
        CassandraSnapshotStore(session, config),
        serialization_for(agg, StoreSpec()),
        writer_id=writer,
    )


async def rows_of(session, config, pid: str) -> list[int]:
    """Every event row of ``pid`` (any epoch), from the table itself."""
    out: list[int] = []
    for p in range(12):
        rows = await session.select_all(
            f"SELECT sequence_nr FROM {config.keyspace}.{config.events_table} "
            f"WHERE persistence_id = ? AND partition_nr = ?",
            (pid, p),
        )
        out += [r[0] for r in rows]
    return sorted(out)


async def snapshot_seqs(session, config, pid: str) -> list[int]:
    rows = await session.select_all(
        f"SELECT sequence_nr FROM {config.keyspace}.{config.snapshots_table} "
        f"WHERE persistence_id = ?",
        (pid,),
    )
    return [r[0] for r in rows]


async def tag_keys(journal, after: TagOffset | None = None) -> list[tuple[str, int]]:
    return [
        (t.event.persistence_id, t.event.sequence_nr)
        async for t in journal.events_by_tag("ledger", after)
    ]


async def test_keep_back_to_the_second_snapshot(session, config):
    eid = f"a-{uuid.uuid4().hex[:6]}"
    a = core(CLEANED, eid, session, config, "w1")
    b = core(KEPT, eid, session, config, "w1")
    pa, pb = CLEANED.persistence_id(eid), KEPT.persistence_id(eid)
    for i in range(1, 24):  # interleaved: their tag rows alternate in the shared tag
        await a.handle(Append(f"a{i}", i))
        await b.handle(Append(f"b{i}", i))
    before = a.state
    await a.stop()
    await b.stop()
    assert await snapshot_seqs(session, config, pa) == [20, 15]
    journal = CassandraJournal(session, config)
    await asyncio.sleep(config.eventual_consistency_delay + 0.2)
    # projection "lagging" stored the offset of a#8; "ahead" read everything
    everything = [t async for t in journal.events_by_tag("ledger")]
    lag_at = next(
        t.offset for t in everything if t.event.persistence_id == pa and t.event.sequence_nr == 8
    )
    offsets = CassandraOffsetStore(session, config.keyspace)
    await offsets.save_offset("lagging", "w0", lag_at)
    await offsets.save_offset("ahead", "w0", everything[-1].offset)
    unread_before = await tag_keys(journal, lag_at)

    cleaner = RetentionCleaner(journal, CLEANED.name, CLEANED.retention)
    plan = await cleaner.run(dry_run=True)
    (p,) = plan.plans
    assert (p.persistence_id, p.mark, p.rows) == (pa, 15, 15)
    # partitions 0-2 hold nothing above 15 (overflow included): whole-partition deletes; 3 a range
    assert [(d.partition_nr, d.kind) for d in p.deletes] == [
        (0, "partition"),
        (1, "partition"),
        (2, "partition"),
        (3, "range"),
    ]
    assert await rows_of(session, config, pa) == list(range(1, 24))  # a plan writes nothing

    report = await cleaner.run()
    assert (report.rows_deleted, report.tombstones, report.finished_walk) == (15, 4, True)
    assert await rows_of(session, config, pa) == list(range(16, 24))  # exactly the rows above
    assert await rows_of(session, config, pb) == list(range(1, 24))  # keep-all: untouched
    assert await snapshot_seqs(session, config, pa) == [20, 15]
    guard = await session.select_all(  # the writer guard's rows are never touched
        f"SELECT epoch FROM {config.keyspace}.{config.epochs_table} WHERE persistence_id = ?",
        (pa,),
    )
    assert [r[0] for r in guard] == [1]
    assert (await journal.epochs.fence(pa))[0] == 1
    again = await cleaner.run()  # nothing left to do: no new tombstones
    assert (again.rows_deleted, again.tombstones) == (0, 0)

    # recovery (a new activation: a new epoch whose view counts the run on from deleted_to)
    a2 = core(CLEANED, eid, session, config, "w2")
    stats = await a2.start()
    assert a2.state == before
    assert (stats.snapshot_sequence_nr, stats.events_replayed, stats.sequence_nr) == (20, 3, 23)
    assert await a2.handle(Append("a24", 24)) == before.balance + 24
    assert await journal.highest_sequence_nr(pa) == 24
    await a2.stop()
    await asyncio.sleep(config.eventual_consistency_delay + 0.2)

    # tag rows follow their events, below the smallest projection offset only
    tags = await cleaner.clean_tags()
    assert tags.rows_deleted == 7  # a#1..a#7: before the lagging offset, events deleted
    assert tags.tombstones == 7  # each between two kept rows of b: one slice each
    assert await tag_keys(journal, lag_at) == unread_before + [(pa, 24)]
    remaining = await tag_keys(journal)
    assert [s for pid, s in remaining if pid == pa] == list(range(8, 25))
    assert [s for pid, s in remaining if pid == pb] == list(range(1, 24))

    verified = await cleaner.verify()
    assert verified.ok and verified.aggregates_checked == 1 and verified.partitions_checked == 4
    # a row put back below the mark (a resurrected write) is found
    await session.execute(
        f"INSERT INTO {config.keyspace}.{config.events_table} (persistence_id, partition_nr, "
        f"sequence_nr, epoch, writer_epoch, payload) VALUES (?, 1, 6, 1, 1, 0x00)",
        (pa,),
    )
    bad = await cleaner.verify()
    assert not bad.ok and "row #6 in partition 1" in bad.violations[0]


class Killed(BaseException):
    """The cleaner's process dies here (nothing in it catches a BaseException)."""


@pytest.mark.parametrize(
    "step, nth, left",
    [("mark.after", 2, 2), ("deleted", 4, 2), ("progress.after", 2, 2), ("deleted", 1, 3)],
)
async def test_a_killed_cleaner_resumes_exactly(session, config, step, nth, left):
    name = f"kill{uuid.uuid4().hex[:6]}"
    agg = dataclasses.replace(CLEANED, name=name)
    pids = []
    for n in range(3):
        c = core(agg, f"e{n}", session, config, "w1")
        for i in range(1, 14 + n):  # 13..15 events: snapshots at 5, 10 (and 15)
            await c.handle(Append(f"x{i}", 1))
        await c.stop()
        pids.append(agg.persistence_id(f"e{n}"))
    journal = CassandraJournal(session, config)
    calls = 0

    async def kill(at: str, **_info: object) -> None:
        nonlocal calls
        if at == step:
            calls += 1
            if calls == nth:
                raise Killed(at)

    with pytest.raises(Killed):
        await RetentionCleaner(journal, name, agg.retention, hook=kill).run()
    # between the kill and the resume every reader sees a consistent log: the mark is
    # written before any row goes, so replay starts right after it and ends at the highest
    for n, pid in enumerate(pids):
        seqs = [e.sequence_nr async for e in journal.replay(pid)]
        deleted_to = (await journal._meta(pid))[0]
        assert seqs == list(range(deleted_to + 1, 13 + n + 1))
        assert await journal.highest_sequence_nr(pid) == 13 + n
    # a fresh cleaner (a new process) resumes where the walk stopped
    resumed = await RetentionCleaner(journal, name, agg.retention).run()
    assert resumed.finished_walk and resumed.aggregates_seen == left
    expect = {pids[0]: 5, pids[1]: 5, pids[2]: 10}  # the 2nd newest snapshot of each
    for pid, mark in expect.items():
        last = 13 + pids.index(pid)
        assert await rows_of(session, config, pid) == list(range(mark + 1, last + 1))
        assert await journal.highest_sequence_nr(pid) == last
    assert (await RetentionCleaner(journal, name, agg.retention).verify()).ok


SLOW = dataclasses.replace(CLEANED, name="slowret")
TYPES = (CLEANED, KEPT, SLOW)  # the --app of the CLI runs below
HERE = Path(__file__).resolve().parent


def cli(config, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "raysource.cli",
        "retention",
        *args,
        "--app",
        "test_retention_cassandra:TYPES",
        "--cassandra",
        f"{config.contact_points[0]}:{config.port}",
        "--keyspace",
        config.keyspace,
    ]


async def test_cli_run_killed_by_sigkill_then_resumed(session, config):
    """``raysource retention run`` paced to 1 row/s is SIGKILLed right after it wrote its
    first mark; a new run finishes the walk and deletes exactly what the policy says; ``plan``
    then has nothing to do and ``verify`` passes; a type that keeps everything plans nothing.
    The CLI runs with the default partition size (5000) on data written with 4: the cleaner's
    walk follows the rows, not the configured size, so it still deletes exactly."""
    pids = []
    for n in range(3):
        c = core(SLOW, f"s{n}", session, config, "w1")
        for i in range(1, 14):
            await c.handle(Append(f"s{i}", 1))
        await c.stop()
        pids.append(SLOW.persistence_id(f"s{n}"))
    journal = CassandraJournal(session, config)
    await journal._prepare()
    proc = await asyncio.create_subprocess_exec(
        *cli(config, "run", "slowret", "--rows-per-s", "1"),
        cwd=HERE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(1200):  # the first mark is written before the paced deletes
            if any([(await journal._meta(p))[0] for p in pids]):
                break
            assert proc.returncode is None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the cleaner never wrote a mark")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = await RetentionCleaner(journal, "slowret", SLOW.retention).run()
    assert resumed.finished_walk
    for p in pids:
        assert await rows_of(session, config, p) == list(range(6, 14))
    out = await asyncio.to_thread(
        subprocess.run, cli(config, "plan", "slowret"), cwd=HERE, capture_output=True, text=True
    )
    assert out.returncode == 0 and "3 aggregates with snapshots seen, 0 to clean" in out.stdout
    out = await asyncio.to_thread(
        subprocess.run, cli(config, "verify", "slowret"), cwd=HERE, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "checked 3 aggregates, 6 partitions: no row below a retention mark" in out.stdout
    out = await asyncio.to_thread(
        subprocess.run, cli(config, "plan", "keptledger"), cwd=HERE, capture_output=True, text=True
    )
    assert out.returncode == 0 and "keep everything" in out.stdout


async def test_a_parked_stream_holds_the_mark_and_legacy_rows_read_after_a_purge(session, config):
    """A projection parked at #4: the mark stays below it until the stream is unparked. And a
    log without epoch records (guard off) whose partition hint is lost still reads to its end
    when the purge emptied the partitions before it (the partition scan tolerates them)."""
    from raysource.readside.offsets import ParkedStream

    name = f"park{uuid.uuid4().hex[:6]}"
    agg = dataclasses.replace(CLEANED, name=name)
    c = core(agg, "p", session, config, "w1")
    for i in range(1, 12):  # snapshots 5, 10: mark 5
        await c.handle(Append(f"p{i}", 1))
    await c.stop()
    pid = agg.persistence_id("p")
    offsets = CassandraOffsetStore(session, config.keyspace)
    await offsets.park(ParkedStream("proj", pid, "w0", 4, "boom", 0))
    journal = CassandraJournal(session, config)
    cleaner = RetentionCleaner(journal, name, agg.retention)
    held = await cleaner.run()
    assert held.plans[0].mark == 3 and "parked #4" in held.plans[0].held_by
    assert await rows_of(session, config, pid) == list(range(4, 12))
    await offsets.unpark("proj", pid)
    await cleaner.run()
    assert await rows_of(session, config, pid) == list(range(6, 12))

    off = CassandraJournal(session, config, guard="off")
    lpid = f"{name}|legacy"
    now = datetime.now(UTC)
    for seq in range(1, 13):
        await off.append([StoredEvent(lpid, seq, b"x", "m", 1, now, "w")])
    snaps = CassandraSnapshotStore(session, config)
    for seq in (8, 12):
        await snaps.save(StoredSnapshot(lpid, seq, b"s", "m", 1, now))
    await cleaner.run()  # mark 8: partitions 0 and 1 go whole
    assert await rows_of(session, config, lpid) == [9, 10, 11, 12]
    await session.execute(  # the hint is only a lower bound: lose it
        f"UPDATE {config.keyspace}.{config.metadata_table} SET partition_hint = null "
        f"WHERE persistence_id = ?",
        (lpid,),
    )
    fresh = CassandraJournal(session, config, guard="off")
    assert await fresh.highest_sequence_nr(lpid) == 12
    assert [e.sequence_nr async for e in fresh.replay(lpid)] == [9, 10, 11, 12]
