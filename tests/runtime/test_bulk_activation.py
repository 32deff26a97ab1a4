"""Activations in bulk (``raysource.runtime.bulk_recovery``, ``journal/cassandra/bulk_claims.py``)
on real Cassandra, and on real Ray racing commands and a shard move.

* The shared view reads a batched claim makes give exactly the single path's view, on every
  kind of log (never written, epoch-0 rows in one and two partitions, deleted, claimed without
  a write, a chain of records, a claim with two newer records).
* A claim of a batch superseded between its record and its confirmation is refused alone (the
  fault kit's gate holds it at ``record.after`` while another journal claims and acknowledges);
  the other claims of the batch go on; the history rules hold. A broken build whose
  confirmation is answered by a read made before the record (after the CAS) starts that
  activation: the test sees it.
* S1 with a batch as the new writer: the stale writer paused after its write is fenced; the
  histories hold.
* A host: a batch of activations (never written and written aggregates) racing commands, a
  second host taking some of them over midway; the history checker finds nothing lost or
  doubled, and the never-written ones were started without reads.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.bulk_claims import _SharedClaims
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.epochs import EpochGuard
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import ConcurrentWriteError
from raysource.runtime.host import AggregateHost
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.fence_faults import Gates, Writer, final_log
from raysource.testing.fence_history import FenceHistory
from raysource.testing.history import History, assert_no_violations, check_history

pytestmark = pytest.mark.cassandra
SER = serialization_for(LEDGER, StoreSpec())


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,), port=port, keyspace=cassandra_keyspace, partition_size=3
    )
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


def _ev(pid: str, seq: int, writer: str) -> StoredEvent:
    return StoredEvent(pid, seq, f"{writer}:{seq}".encode(), "b.E#1", 1, datetime.now(UTC), writer)


async def _write(journal: CassandraJournal, pid: str, first: int, n: int, writer: str) -> None:
    for s in range(first, first + n):
        await journal.append([_ev(pid, s, writer)])


async def test_shared_claim_views_equal_the_single_views(session):
    cfg = session.config
    j = CassandraJournal(session, cfg)
    off = CassandraJournal(session, cfg, guard="off")  # epoch-0 rows (the log before epochs)
    u = uuid.uuid4().hex[:6]
    pids = {k: f"v{u}-{k}" for k in ("new", "p0", "p01", "del", "claimed", "chain", "ahead")}
    await _write(off, pids["p0"], 1, 2, "w")  # rows in partition 0 only
    await _write(off, pids["p01"], 1, 5, "w")  # rows in partitions 0 and 1
    await _write(off, pids["del"], 1, 2, "w")
    await off.delete_to(pids["del"], 2)
    await j.begin_activation(pids["claimed"], "c1")  # a record, no row
    await j.begin_activation(pids["chain"], "a")
    await _write(j, pids["chain"], 1, 4, "a")
    await j.begin_activation(pids["chain"], "b")
    await _write(j, pids["chain"], 5, 2, "b")
    for w in ("x", "y", "z"):  # three records, no row
        await j.begin_activation(pids["ahead"], w)
    single, shared = EpochGuard(j), _SharedClaims(j)
    cases = [(p, below) for p in pids.values() for below in range(1, 6)]
    want = [await single.view(p, below) for p, below in cases]
    got = await asyncio.gather(*(shared.view(p, below) for p, below in cases))
    assert got == want
    assert want[cases.index((pids["p01"], 1))].h == 5  # the cases cover what they say
    assert want[cases.index((pids["chain"], 3))].chain == ((1, 1), (2, 5))


async def test_a_superseded_claim_of_a_batch_is_refused_alone(session):
    assert await _superseded_schedule(session) == []


async def test_a_confirmation_read_before_the_record_lets_a_superseded_claim_start(
    session, monkeypatch
):
    """Broken build: the batch's confirmation is answered with the fence as it was right after
    the CAS (a read that does not start after the record): the superseded claim starts."""
    early: dict[str, tuple[int, uuid.UUID]] = {}
    real = _SharedClaims.fence

    async def fence(self, pid, *, serial=False):
        if not serial and pid in early:
            return early[pid]
        return await real(self, pid, serial=serial)

    monkeypatch.setattr(_SharedClaims, "fence", fence)
    problems = await _superseded_schedule(session, early=early)
    assert any("superseded claim started" in p for p in problems), problems


async def _superseded_schedule(session, early: dict | None = None) -> list[str]:
    """Ten aggregates claimed in one batch; the one with a history is held after its record
    while another journal claims it and acknowledges #3; the held claim must be refused."""
    h = FenceHistory()
    u = uuid.uuid4().hex[:6]
    pids = [f"s{u}-{i}" for i in range(10)]
    target = pids[3]
    old = Writer(CassandraJournal(session, session.config), target, "L", h)
    await old.activate()
    assert (await old.append(2)).outcome == "ack"
    batch_journal = CassandraJournal(session, session.config)
    gates = Gates()
    gate = gates.hold("record.after", pid=target)

    async def hook(step: str, **info) -> None:
        if early is not None and step == "claim.after":
            early[info["pid"]] = (info["epoch"], info["owner"])
        await gates(step, **info)

    batch_journal.hook = hook
    started = h.tick()
    batch = asyncio.create_task(batch_journal.begin_activations([(p, f"B-{p}") for p in pids]))
    await gate.reached.wait()
    newer = Writer(CassandraJournal(session, session.config), target, "E", h)
    await newer.activate()
    assert (await newer.append(1)).outcome == "ack"  # #3
    gate.release()
    outcomes = await batch
    problems: list[str] = []
    if not isinstance(outcomes[3], ConcurrentWriteError):
        problems.append(f"superseded claim started: {outcomes[3]!r}")
        log = [(e.sequence_nr, bytes(e.payload)) async for e in batch_journal.replay(target, 1, 2)]
        h.recovered("B", started, log)
    others = [o for i, o in enumerate(outcomes) if i != 3]
    if others != [0] * 9:
        problems.append(f"the other claims of the batch: {others!r}")
    h.final(await final_log(CassandraJournal(session, session.config), target))
    return problems + h.problems()


class _BatchWriter(Writer):
    """A :class:`Writer` whose activation is one claim of a batch of ``others``."""

    def __init__(self, *args, others: list[str], **kw) -> None:
        super().__init__(*args, **kw)
        self.others = others

    async def activate(self) -> list[tuple[int, bytes]]:
        started = self.history.tick()
        pairs = [(self.pid, self.name)] + [(p, f"{self.name}-{p}") for p in self.others]
        outcomes = await self.journal.begin_activations(pairs)
        assert all(isinstance(o, int) for o in outcomes), outcomes
        highest = outcomes[0]
        assert isinstance(highest, int)
        log = [
            (e.sequence_nr, bytes(e.payload))
            async for e in self.journal.replay(self.pid, 1, highest)
        ]
        self.history.recovered(self.name, started, log)
        self.next_seq = highest + 1
        return log


async def test_s1_with_a_batch_as_the_new_writer(session):
    h = FenceHistory()
    u = uuid.uuid4().hex[:6]
    pid = f"b{u}"
    make = lambda: CassandraJournal(session, session.config)  # noqa: E731
    old = Writer(make(), pid, "L", h)
    await old.activate()
    assert (await old.append(2)).outcome == "ack"
    gate = old.gates.hold("append.after_w1")
    stale = asyncio.create_task(old.append(1))  # #3: written, paused before its fence read
    await gate.reached.wait()
    new = _BatchWriter(make(), pid, "E", h, others=[f"b{u}-{i}" for i in range(8)])
    log = await new.activate()
    assert [n for n, _ in log] == [1, 2, 3]  # the stale write was acknowledged by the store
    assert (await new.append(1)).outcome == "ack"
    gate.release()
    assert (await stale).outcome == "unknown"
    h.final(await final_log(make(), pid))
    assert h.problems() == []


async def test_a_batch_racing_commands_and_a_second_host(session, monkeypatch):
    cfg = session.config
    u = uuid.uuid4().hex[:6]
    ids = [f"r{u}-{i}" for i in range(40)]
    written, fresh = ids[:20], ids[20:]
    seed = AggregateHost(LEDGER, CassandraJournal(session, cfg), InMemorySnapshotStore(), SER)
    history = History()
    for e in written:
        await history.ask(f"{e}/seed", seed.ask(e, Append(f"{e}/seed")))
    await seed.close()
    loaded: list[str] = []
    first = AggregateHost(LEDGER, CassandraJournal(session, cfg), InMemorySnapshotStore(), SER)
    real_load = first.snapshot_store.load

    async def counting_load(pid, max_seq=None):
        loaded.append(pid)
        return await real_load(pid) if max_seq is None else await real_load(pid, max_seq)

    first.snapshot_store.load = counting_load  # type: ignore[method-assign]
    second = AggregateHost(LEDGER, CassandraJournal(session, cfg), InMemorySnapshotStore(), SER)
    moved = set(ids[::4])  # a shard's worth of aggregates goes to the second host midway

    async def commands(eid: str) -> None:
        for k in range(6):
            host = second if (eid in moved and k >= 3) else first
            op = f"{eid}/{k}"
            obs = await history.ask(op, host.ask(eid, Append(op)), caller=eid)
            if obs.outcome == "not_applied":  # stopped under it: once more, on the other
                await history.ask(op, second.ask(eid, Append(op)), caller=eid)

    async def move() -> None:
        await asyncio.sleep(0)
        await second.activate_many(sorted(moved))  # claims: the first host's writes fence
        await first.handoff(moved.__contains__)

    failed, *_ = await asyncio.gather(first.activate_many(ids), *(commands(e) for e in ids), move())
    assert first._bulk is not None and first._bulk.batches >= 1
    untouched = [e for e in fresh if e not in moved]  # only the first host ever wrote them
    assert first._bulk.fast >= len(untouched)  # activated from a log without events: no reads
    assert not {LEDGER.persistence_id(e) for e in untouched} & set(loaded)
    assert len(loaded) >= len(written) // 2  # the written ones did load (the count is real)
    live = [*first._cores.values(), *second._cores.values()]
    await first.close()
    await second.close()
    violations = await check_history(
        history,
        CassandraJournal(session, cfg),
        aggregate_type=LEDGER,
        serialization=SER,
        persistence_ids=[LEDGER.persistence_id(e) for e in ids],
        command_of=lambda ev: ev.op_id,
        tags=False,
    )
    assert_no_violations(violations, {"failed activations": failed, "live": len(live)})
    counts = history.counts()
    assert counts["ok"] >= len(ids) * 4, counts
