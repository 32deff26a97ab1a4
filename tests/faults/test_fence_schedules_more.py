"""The epoch guard's further fault schedules on real Cassandra (``raysource.testing.
fence_schedules``: S4, S6, S7, S9, S10, S11) and rule H4, checked by the history rules
(``raysource.testing.fence_history``). The real build passes each; the deliberately broken
builds fail the schedule that catches their mistake:

* design A (the epoch not in the row key) fails S4 (H1: the stale writer's write, stamped 10 s
  ahead by its clock, replaces the acknowledged row, and the reader drops it);
* tags repaired before the claim is confirmed fails S7 (H6: a voided event in the tag stream);
* a recovery that repairs only the newest group while two flushes were in flight fails S9
  (H6: a valid event never reaches its tag stream);
* no fence read before the acknowledgement fails S3 under rule H4 too (the stale writer
  acknowledges after the new activation recovered without its event).

S6 (late record), S10 (crossing group, stale row mid-group in the next partition) and S11
(delete_to, late write below the mark) have no broken build named in the design; the real
build is checked on each.
"""

from __future__ import annotations

import uuid

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.epochs import EpochGuard
from raysource.journal.cassandra.journal import CassandraJournal, _row
from raysource.journal.cassandra.session import CassandraSession
from raysource.testing.fence_faults import schedule_s3
from raysource.testing.fence_schedules import (
    schedule_s4,
    schedule_s6,
    schedule_s7,
    schedule_s9,
    schedule_s10,
    schedule_s11,
)

pytestmark = pytest.mark.cassandra
DELAY = 1.0  # the tag stream's visibility delay


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        partition_size=3,
        eventual_consistency_delay=DELAY,
    )
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


def skewer(session):
    """skew(s): the client's write timestamps run s seconds ahead (0: the real clock)."""
    cluster = session.driver_session.cluster
    real = cluster.timestamp_generator

    def skew(s: float) -> None:
        cluster.timestamp_generator = (lambda: real() + int(s * 1e6)) if s else real

    return skew


def payloads(h) -> list[bytes]:
    return [p for _, p in h.final_log]


async def test_s4_a_late_write_from_a_clock_10s_ahead_changes_nothing(session):
    p = pid()
    h = await schedule_s4(maker(session), p, skewer(session))
    assert h.problems() == []
    assert payloads(h) == [b"L:1", b"L:2", b"E:3"]
    rows = await session.execute(
        f"SELECT writer_id, WRITETIME(payload) FROM {session.config.keyspace}.messages_v2 "
        f"WHERE persistence_id = ? AND partition_nr = 0 AND sequence_nr = 3",
        (p,),
    )
    stamps = {r[0]: r[1] for r in rows}
    assert stamps["L"] - stamps["E"] >= 9_000_000  # the stale row really is 10 s "newer"


async def test_s4_design_a_loses_the_acknowledged_event(session):
    h = await schedule_s4(maker(session, design_a=True), pid(), skewer(session))
    assert any(x.startswith("H1: acked #3 by E") for x in h.problems()), h.problems()


async def test_s6_a_late_record_leaves_its_epoch_void(session):
    p = pid()
    h = await schedule_s6(maker(session), p, f"t-{p}", DELAY)
    assert h.problems() == []
    assert payloads(h) == [b"L:1", b"L:2", b"E1:3", b"E2:4"]
    assert [w for w, *_ in h.recoveries] == ["L", "E1", "E2"]  # E never started


async def test_s7_tags_repaired_after_the_confirmation_only(session):
    p = pid()
    h = await schedule_s7(maker(session), p, f"t-{p}", DELAY)
    assert h.problems() == []
    assert payloads(h) == [b"L:1", b"L:2", b"E1:3"]


async def test_s7_tags_repaired_before_the_confirmation_leak_a_void_event(session):
    p = pid()
    h = await schedule_s7(maker(session), p, f"t-{p}", DELAY, tags_before_confirm=True)
    assert any(x.startswith("H6: the tag stream delivered #3 b'L:3'") for x in h.problems()), (
        h.problems()
    )


async def test_s9_two_flushes_in_flight_both_reach_the_tag_stream(session):
    p = pid()
    h = await schedule_s9(maker(session), p, f"t-{p}", DELAY)
    assert h.problems() == []
    assert payloads(h) == [b"L:1", b"L:2", b"L:3", b"E:4"]


async def test_s9_repairing_only_the_newest_group_loses_a_tag(session):
    p = pid()
    h = await schedule_s9(maker(session), p, f"t-{p}", DELAY, repair=1)
    assert "H6: #2 b'L:2' of the final log is not in its tag stream" in h.problems()


async def test_s10_a_crossing_group_and_a_stale_row_mid_group(session):
    async def land(journal, event):  # the old epoch's pipelined #4 lands in partition 1
        claim = journal._claims[(event.persistence_id, "L")]
        await session.execute(
            journal._ps["insert"], _row(event, journal._pn(4), claim.epoch, claim.epoch)
        )

    p = pid()
    h = await schedule_s10(maker(session), p, land)
    assert h.problems() == []
    assert payloads(h) == [b"L:1", b"L:2", b"E:3", b"E:4", b"E:5", b"E1:6"]


async def test_s11_a_late_write_below_the_deleted_mark(session):
    h = await schedule_s11(maker(session), pid())
    assert h.problems() == []
    assert h.final_log == [(4, b"E:4"), (5, b"E1:5")]


async def test_h4_catches_an_ack_without_a_fence_read_in_s3(session, monkeypatch):
    real = EpochGuard._fence_retrying

    async def no_read(self, pid, shared=False):
        if not shared:
            return await real(self, pid)
        claim = next(c for (p, _), c in self.j._claims.items() if p == pid)
        return claim.epoch, claim.owner

    monkeypatch.setattr(EpochGuard, "_fence_retrying", no_read)
    h = await schedule_s3(maker(session), pid())
    assert any(x.startswith("H4: L (epoch 1) acknowledged #3") for x in h.problems()), h.problems()
