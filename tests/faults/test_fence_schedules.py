"""The epoch guard's fault schedules on real Cassandra (``raysource.testing.fence_faults``),
checked by the history rules H1, H2, H3, H5 (``raysource.testing.fence_history``).

The real build passes every schedule. Deliberately broken builds fail the schedule that
catches their mistake:

* design A (the epoch only a value, rows keyed by sequence number) fails S3 (H1: the stale
  writer's late write, stamped later, replaces the acknowledged row, and the reader then drops
  it);
* no fence read before the acknowledgement fails S3 (H1/H2: the stale writer acknowledges an
  event the new writer replaced);
* a last segment read as "every row of its epoch" instead of the contiguous run fails S8 (H3);
* a fenced flush answered "not applied" (``ConcurrentWriteError``) fails S1 (H5).
"""

from __future__ import annotations

import uuid

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.epochs import EpochGuard
from raysource.journal.cassandra.journal import CassandraJournal, _row
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import (
    ConcurrentWriteError,
    JournalOutcomeUnknownError,
    WriterFencedError,
)
from raysource.testing.fence_faults import (
    Writer,
    final_log,
    schedule_s1,
    schedule_s2,
    schedule_s3,
    schedule_s5,
    schedule_s8,
)
from raysource.testing.fence_history import FenceHistory

pytestmark = pytest.mark.cassandra


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,), port=port, keyspace=cassandra_keyspace, partition_size=3
    )  # groups cross partitions in every schedule
    s = await CassandraSession.open(cfg, create_schema=True)
    yield s
    await s.close()


def maker(session, *, design_a: bool = False):
    def make() -> CassandraJournal:
        j = CassandraJournal(session, session.config)
        j.unsound_design_a = design_a
        return j

    return make


def pid() -> str:
    return f"fence-{uuid.uuid4().hex[:10]}"


def by_writer(h: FenceHistory) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for op in h.appends:
        out.setdefault(op.writer, []).append(op.outcome or "")
    return out


# ---------------------------------------------------------------- the real build


async def test_s1_stale_writer_paused_before_its_fence_read(session):
    h = await schedule_s1(maker(session), pid())
    assert h.problems() == []
    assert by_writer(h) == {"L": ["ack", "unknown"], "E": ["ack"]}
    assert "WriterFencedError" in h.appends[1].error
    # the new writer recovered the stale #3 (its write was acknowledged before the claim)
    assert [s for s, _ in h.recoveries[1][2]] == [1, 2, 3]
    assert [p for _, p in h.final_log] == [b"L:1", b"L:2", b"L:3", b"E:4"]


async def test_s2_stale_ack_after_a_passing_fence_read_survives(session):
    h = await schedule_s2(maker(session), pid())
    assert h.problems() == []
    assert by_writer(h) == {"L": ["ack", "ack"], "E": ["ack"]}
    assert [p for _, p in h.final_log] == [b"L:1", b"L:2", b"L:3", b"E:4"]


async def test_s3_late_stale_write_with_a_later_timestamp_changes_nothing(session):
    p = pid()
    h = await schedule_s3(maker(session), p)
    assert h.problems() == []
    assert by_writer(h) == {"L": ["ack", "unknown"], "E": ["ack"]}
    assert [pl for _, pl in h.final_log] == [b"L:1", b"L:2", b"E:3"]
    # both rows of #3 exist, and the stale one really was stamped later
    ks = session.config.keyspace
    rows = await session.execute(
        f"SELECT writer_id, WRITETIME(payload) FROM {ks}.messages_v2 WHERE persistence_id = ? "
        f"AND partition_nr = 0 AND sequence_nr = 3",
        (p,),
    )
    stamps = {r[0]: r[1] for r in rows}
    assert set(stamps) == {"L", "E"} and stamps["L"] > stamps["E"]


async def test_s5_concurrent_claims_exactly_one_writes(session):
    for _ in range(3):
        h = await schedule_s5(maker(session), pid())
        assert h.problems() == []
        assert [op.outcome for op in h.appends].count("ack") == 1
        assert len(h.final_log) == 1


class _UnconfirmedClaim:
    """A session proxy: the next claim (a conditional write of the fence) is executed by the
    node but answered as unconfirmed (``applied``), or not executed and answered so."""

    def __init__(self, session, applied: bool) -> None:
        self._s, self.applied, self.fired, self.serial_reads = session, applied, False, 0

    def __getattr__(self, name):
        return getattr(self._s, name)

    async def execute(self, stmt, params=None, **kw):
        cql = getattr(stmt, "query_string", "")
        if "writer_fence" in cql and " IF " in cql and not self.fired:
            self.fired = True
            if self.applied:
                await self._s.execute(stmt, params, **kw)
            raise JournalOutcomeUnknownError("injected: CAS timeout")
        return await self._s.execute(stmt, params, **kw)

    async def select_one(self, stmt, params=None, **kw):
        if (
            stmt.serial_consistency_level is None
            and "writer_fence" in stmt.query_string
            and stmt.consistency_level in (8, 9)
        ):  # SERIAL, LOCAL_SERIAL
            self.serial_reads += 1
        return await self._s.select_one(stmt, params, **kw)


@pytest.mark.parametrize("applied", [True, False])
async def test_s5_a_claim_that_times_out_is_resolved_by_a_serial_read(session, applied):
    p = pid()
    journal = CassandraJournal(session, session.config)
    await journal._prepare()
    proxy = _UnconfirmedClaim(session, applied)
    journal.session = proxy
    h = FenceHistory()
    w = Writer(journal, p, "W", h)
    await w.activate()
    assert proxy.fired and proxy.serial_reads >= 1
    claim = journal._claims[(p, "W")]
    # applied: the serial read found our owner (epoch 1, no second claim); not applied: retried
    assert claim.epoch == 1
    assert (await w.append(1)).outcome == "ack"
    h.final(await final_log(CassandraJournal(session, session.config), p))
    assert h.problems() == [] and h.final_log == [(1, b"W:1")]


async def test_s8_a_gap_in_the_old_pipeline_stays_invalid(session):
    async def land(journal, event):  # the old epoch's pipelined next flush lands
        claim = journal._claims[(event.persistence_id, "L")]
        await session.execute(
            journal._ps["insert"], _row(event, journal._pn(4), claim.epoch, claim.epoch)
        )

    p = pid()
    h = await schedule_s8(maker(session), p, land)
    assert h.problems() == []
    assert [s for s, _ in h.recoveries[1][2]] == [1, 2]
    assert [pl for _, pl in h.final_log] == [b"L:1", b"L:2", b"E:3", b"E:4"]


# ---------------------------------------------------------------- broken builds must fail


async def test_design_a_loses_an_acknowledged_event_in_s3(session):
    h = await schedule_s3(maker(session, design_a=True), pid())
    problems = h.problems()
    assert any(x.startswith("H1: acked #3 by E") for x in problems), problems
    assert [pl for _, pl in h.final_log] == [b"L:1", b"L:2"]


async def test_no_fence_read_acks_a_replaced_event_in_s3(session, monkeypatch):
    real = EpochGuard._fence_retrying

    async def no_read(self, pid, shared=False):  # appends never ask: they take their own claim
        if not shared:  # the claim's confirmation still reads
            return await real(self, pid)
        claim = next(c for (p, _), c in self.j._claims.items() if p == pid)
        return claim.epoch, claim.owner

    monkeypatch.setattr(EpochGuard, "_fence_retrying", no_read)
    h = await schedule_s3(maker(session), pid())
    assert any(x.startswith(("H1: acked #3 by L", "H2: acked #3 by L")) for x in h.problems())


async def test_last_segment_as_every_row_breaks_the_prefix_in_s8(session, monkeypatch):
    async def every_row(self, pid, epoch, start):  # max number of the epoch, gaps ignored
        ns = [n async for n, e in self._scan(pid, start) if e == epoch]
        return max(ns, default=start - 1)

    async def scan(self, pid, start):
        for p in range(0, 4):
            async for n, e in self.j.session.stream(self.j._ps["run_scan"], (pid, p, start)):
                yield n, e or 0

    monkeypatch.setattr(EpochGuard, "_run_end", every_row)
    monkeypatch.setattr(EpochGuard, "_scan", scan, raising=False)

    async def land(journal, event):
        claim = journal._claims[(event.persistence_id, "L")]
        await session.execute(
            journal._ps["insert"], _row(event, journal._pn(4), claim.epoch, claim.epoch)
        )

    h = await schedule_s8(maker(session), pid(), land)
    assert any(x.startswith("H3") for x in h.problems()), h.problems()


async def test_fenced_answered_not_applied_breaks_the_contract_in_s1(session, monkeypatch):
    real = CassandraJournal._append_epoch

    async def not_applied(self, events):
        try:
            await real(self, events)
        except WriterFencedError as exc:
            raise ConcurrentWriteError(events[0].persistence_id, events[0].sequence_nr) from exc

    monkeypatch.setattr(CassandraJournal, "_append_epoch", not_applied)
    h = await schedule_s1(maker(session), pid())
    assert any(x.startswith("H5") for x in h.problems()), h.problems()
