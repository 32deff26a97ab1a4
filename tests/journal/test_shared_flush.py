"""Host-wide flushes (``raysource.journal.cassandra.shared_writes``) on real Cassandra: the event
batches of many aggregates of one host, asked for in one event-loop step, go out as one request;
its failure is "outcome unknown" for every aggregate it carried, and a fence is per aggregate.

* a shared request whose answer is lost (executed), or answered by a timeout and executed
  later (after the aggregates were recovered elsewhere): every part is outcome unknown, its
  epoch ends, the next activations recover; the epoch history rules (H1, H2, H3, H5:
  ``raysource.testing.fence_history``) hold for each aggregate;
* one aggregate fenced while its rows ride in a shared request with others: the others are
  acknowledged, the fenced one is outcome unknown;
* the same through the runtime (``AggregateHost`` + ``EntityCore``): callers' outcomes checked
  by the history checker (``raysource.testing.history``) against the journal;
* the per-append guard keeps one conditional batch per append (never shared).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from raysource.examples.ledger import LEDGER, Append, Appended
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import ConfigError, JournalError, WriterFencedError
from raysource.runtime.core import EntityCore
from raysource.runtime.host import AggregateHost
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.driver_faults import DriverFault, DriverFaults
from raysource.testing.fence_history import FenceHistory
from raysource.testing.history import History, LiveState, assert_no_violations, check_history

pytestmark = pytest.mark.cassandra

N = 6  # aggregates per host


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        partition_size=4,  # parts in several partitions of one aggregate too
        request_timeout=30.0,
        eventual_consistency_delay=0.5,
    )
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


def _event(pid: str, seq: int, writer: str) -> StoredEvent:
    return StoredEvent(pid, seq, f"{writer}:{seq}".encode(), "E#1", 1, datetime.now(UTC), writer)


class Host:
    """One host: a journal shared by the activations of ``pids`` (writer ``name``), one
    :class:`FenceHistory` per aggregate."""

    def __init__(self, session, name: str, histories: dict[str, FenceHistory]) -> None:
        self.journal = CassandraJournal(session, session.config)
        self.name, self.h = name, histories
        self.next: dict[str, int] = {}

    async def activate(self, pid: str) -> None:
        h = self.h[pid]
        started = h.tick()
        await self.journal.begin_activation(pid, self.name)
        top = await self.journal.highest_sequence_nr(pid)
        log = [(e.sequence_nr, bytes(e.payload)) async for e in self.journal.replay(pid, 1, top)]
        h.recovered(self.name, started, log)
        self.next[pid] = top + 1

    async def append(self, pid: str) -> str:
        h, seq = self.h[pid], self.next[pid]
        ev = _event(pid, seq, self.name)
        op = h.append_started(self.name, [(seq, ev.payload)])
        op.sent = True  # the test cannot see the send: never "not applied" at all
        exc: BaseException | None = None
        try:
            await self.journal.append([ev])
        except JournalError as err:
            exc = err
        h.append_done(op, exc)
        if exc is None:
            self.next[pid] = seq + 1
        return op.outcome or ""

    async def round(self, pids: list[str]) -> list[str]:
        """Every aggregate appends one event, all in the same loop step."""
        return list(await asyncio.gather(*(self.append(p) for p in pids)))


async def _check(session, histories: dict[str, FenceHistory]) -> None:
    reader = CassandraJournal(session, session.config)
    for pid, h in histories.items():
        h.final([(e.sequence_nr, bytes(e.payload)) async for e in reader.replay(pid)])
        assert h.problems() == [], (pid, h.problems(), h.appends)


@pytest.mark.parametrize("kind", ["lost_response", "late"])
async def test_a_failed_shared_request_is_unknown_for_every_aggregate_in_it(session, kind):
    pids = [f"sh-{uuid.uuid4().hex[:8]}-{i}" for i in range(N)]
    hs = {p: FenceHistory() for p in pids}
    a = Host(session, "A", hs)
    for p in pids:
        await a.activate(p)
    for _ in range(5):  # #1..#5: the group of #5 starts partition 1 (partition_size 4)
        assert await a.round(pids) == ["ack"] * N
    stats = a.journal.shared
    assert stats is not None and stats.stats.largest == N, stats and stats.stats
    assert stats.stats.requests == 5, stats.stats  # one request per round, not per aggregate
    with DriverFaults([DriverFault(kind, nth=1, target="shared")]) as driver:
        outcomes = await a.round(pids)
        assert driver.fired == [f"{kind}@shared#1"]
        # every part of the failed request: outcome unknown, its epoch ended
        assert outcomes == ["unknown"] * N
        b = Host(session, "B", hs)
        for p in pids:  # the next activation (another host) recovers each one
            await b.activate(p)
        assert await b.round(pids) == ["ack"] * N
        # late: the request lands now, after B recovered and acknowledged the same numbers
        await driver.wait_landed()
    for p in pids:  # A's epochs ended: nothing more is written by A
        with pytest.raises(WriterFencedError):
            await a.journal.append([_event(p, a.next[p], "A")])
    assert await b.round(pids) == ["ack"] * N
    await _check(session, hs)
    for p in pids:
        # lost_response: A's #6 was executed before B claimed, so B recovered it; late: it
        # landed after B's #6 and #7 and stays invalid
        want = [b"A:1", b"A:2", b"A:3", b"A:4", b"A:5"]
        want += [b"A:6", b"B:7", b"B:8"] if kind == "lost_response" else [b"B:6", b"B:7"]
        assert [v for _, v in hs[p].final_log or []] == want


async def test_an_aggregate_fenced_in_a_shared_request_fails_alone(session):
    pids = [f"fx-{uuid.uuid4().hex[:8]}-{i}" for i in range(N)]
    hs = {p: FenceHistory() for p in pids}
    a = Host(session, "A", hs)
    for p in pids:
        await a.activate(p)
    assert await a.round(pids) == ["ack"] * N
    victim = pids[2]
    b = Host(session, "B", {victim: hs[victim]})
    reached, go = asyncio.Event(), asyncio.Event()

    async def hook(step: str, **info) -> None:
        # the victim's rows rode in the shared request; hold it before its fence read while
        # another host claims, recovers and appends
        if step == "append.after_w1" and info.get("pid") == victim:
            reached.set()
            await go.wait()

    a.journal.hook = hook
    before = a.journal.shared.stats.requests
    round_ = asyncio.ensure_future(a.round(pids))
    await reached.wait()
    assert a.journal.shared.stats.requests == before + 1  # all six parts, one request
    await b.activate(victim)
    assert await b.append(victim) == "ack"
    go.set()
    outcomes = await round_
    assert outcomes == ["ack", "ack", "unknown", "ack", "ack", "ack"]
    assert "fenced by epoch" in hs[victim].appends[-2].error  # the victim's A:#2
    assert await a.round([p for p in pids if p != victim]) == ["ack"] * (N - 1)
    await _check(session, hs)
    # B recovered A's #2 (written before B's claim): B's append was #3
    assert [s for s, _ in hs[victim].final_log or []] == [1, 2, 3]


async def test_per_append_guard_never_shares_a_request(session):
    j = CassandraJournal(session, replace(session.config, guard="per-append"))
    pids = [f"pa-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    await asyncio.gather(*(j.append([_event(p, 1, "w")]) for p in pids))
    assert j.shared is None and j.write_count == 3
    # guard off: plain rows, shared like the epoch path's
    off = CassandraJournal(session, replace(session.config, guard="off"))
    await asyncio.gather(*(off.append([_event(p, 2, "w")]) for p in pids))
    assert off.shared is not None and off.shared.stats.shared_requests == 1
    for p in pids:
        assert [e.sequence_nr async for e in off.replay(p)] == [1, 2]


# ---------------------------------------------------------------- through the runtime


async def test_runtime_callers_of_a_failed_shared_flush(session):
    """Callers of many aggregates on one host (real AggregateHost and EntityCore); the second
    shared request is lost (executed, answer lost), the fourth answered by a timeout and
    executed later. Every caller's outcome is checked against the journal."""
    cfg = session.config
    ledger = replace(LEDGER, name=f"ledger{uuid.uuid4().hex[:6]}")
    ser = serialization_for(ledger, StoreSpec())
    journal = CassandraJournal(session, cfg)
    snapshots = CassandraSnapshotStore(session, cfg)
    host = AggregateHost(ledger, journal, snapshots, ser, max_batch=8)
    ids = [f"e{i}" for i in range(N)]
    history = History()

    async def ask(eid: str, cmd: str) -> str:
        obs = await history.ask(cmd, asyncio.wait_for(host.ask(eid, Append(cmd, 1)), 60))
        return obs.outcome

    async def round_(r: int) -> list[str]:
        return list(await asyncio.gather(*(ask(e, f"{e}-r{r}") for e in ids)))

    assert await round_(0) == ["ok"] * N  # activations (claims, recoveries)
    faults = [
        DriverFault("lost_response", nth=2, target="shared"),
        DriverFault("late", nth=4, target="shared", land_s=0.3),
    ]
    seen: list[list[str]] = []
    with DriverFaults(faults) as driver:
        for r in range(1, 7):
            seen.append(await round_(r))
        await driver.wait_landed()
        assert driver.fired == ["lost_response@shared#2", "late@shared#4"], driver.fired
    assert driver.shared >= 6 and journal.shared is not None
    assert journal.shared.stats.largest >= 2  # the aggregates' flushes did share requests
    # a failed shared request: each of its callers heard "outcome unknown", no one else did
    assert sum(o == "unknown" for r in seen for o in r) == sum(driver.fired_parts), seen
    assert min(driver.fired_parts) >= 2
    live = [
        LiveState(c.persistence_id, c.sequence_nr, c.state, c.writer_id)
        for c in host._cores.values()
        if not c.stopped
    ]
    await host.close()
    for eid in ids:  # a fresh activation's recovery must equal the fold
        core = EntityCore(ledger, eid, journal, snapshots, ser, writer_id="fresh")
        await core.start()
        live.append(LiveState(core.persistence_id, core.sequence_nr, core.state, core.writer_id))
        await core.stop()
    violations = await check_history(
        history,
        journal,
        aggregate_type=ledger,
        serialization=ser,
        persistence_ids=[ledger.persistence_id(e) for e in ids],
        command_of=lambda ev: ev.op_id if isinstance(ev, Appended) else None,
        live=live,
        expected_reply=lambda _cmd, state: state.balance,
        tags=False,
    )
    assert_no_violations(violations)


# ---------------------------------------------------------------- limits (no Cassandra)


def _rows(pid: str, pnr: int, size: int = 10) -> list[tuple]:
    return [(pid, pnr, 1, 1, 1, 0, "w", 1, "m", b"x" * size, None, None)]


async def test_shared_requests_respect_the_partition_and_size_limits():
    from raysource.journal.cassandra.shared_writes import SharedWrites

    sw = SharedWrites(None, None, "ONE", max_parts=10, max_bytes=4096)
    chunks: list[list] = []

    def send(chunk: list) -> None:  # the chunking alone: every part answered at once
        chunks.append(chunk)
        for part in chunk:
            part.future.set_result(None)

    sw._send = send  # type: ignore[method-assign]
    parts = [_rows("p0", 0)] + [_rows(f"p{i}", 0) for i in range(23)]  # p0 twice: one key
    await asyncio.gather(*(sw.write(p) for p in parts))
    keys = [{(p.rows[0][0], p.rows[0][1]) for p in c} for c in chunks]
    assert [len(k) for k in keys] == [10, 10, 3] and [len(c) for c in chunks] == [11, 10, 3]
    chunks.clear()
    big = [_rows(f"b{i}", 0, size=3000) for i in range(3)]
    await asyncio.gather(*(sw.write(p) for p in big))
    assert [len(c) for c in chunks] == [1, 1, 1]  # over max_bytes together: one each


def test_shared_write_limits_are_checked():
    for bad in (dict(shared_write_partitions=0), dict(shared_write_bytes=0)):
        with pytest.raises(ConfigError, match="must be an int >= 1"):
            CassandraConfig(**bad)
