"""The fault kit (raysource.testing.faults) does what each fault kind says, and the history
checker (raysource.testing.history) flags hand-made bad histories: a doubled command, a lost
ack, a not-applied command that is stored, an interleaving, two writers on one number, a
missing tag row, an uncategorized error."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.errors import (
    AggregateStoppedError,
    CommandRejected,
    HostCrashedError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
    PersistFailedError,
    WriteOutcomeUnknownError,
)
from raysource.examples.ledger import LEDGER, Append, Appended, LedgerState
from raysource.journal.api import StoredEvent, StoredSnapshot
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing import faults as fk
from raysource.testing.history import (
    History,
    LiveState,
    Observation,
    assert_no_violations,
    check_history,
    classify,
)

SER = serialization_for(LEDGER, StoreSpec())
PID = LEDGER.persistence_id("acct")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(seq: int, op: str, amount: int = 1, writer: str = "w1") -> StoredEvent:
    sid, manifest, payload = SER.encode(Appended(op, amount))
    return StoredEvent(PID, seq, payload, manifest, sid, T0, writer, frozenset({"ledger"}))


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------- the faults


async def test_fail_before_send_stores_nothing() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.fail()])
    with pytest.raises(JournalUnavailableError) as info:
        await j.append([ev(1, "a")])
    assert not isinstance(info.value, JournalOutcomeUnknownError)
    assert j.inner.events(PID) == [] and j.writes == []
    await j.append([ev(1, "a")])  # times=1: the next call goes through
    assert len(j.inner.events(PID)) == 1
    assert [f.fault for f in j.fired] == ["fail@append"]


async def test_lose_response_applies_then_reports_unknown() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.lose_response(nth=2)])
    await j.append([ev(1, "a")])
    with pytest.raises(JournalOutcomeUnknownError):
        await j.append([ev(2, "b")])
    assert [e.sequence_nr for e in j.inner.events(PID)] == [1, 2]
    assert j.answers[-1].answer == "JournalOutcomeUnknownError"


async def test_duplicate_sends_the_same_append_twice() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.duplicate()])
    await j.append([ev(1, "a")])  # the journal recognises its own group: a success
    assert [(w.how, w.stored) for w in j.writes] == [("sent", True), ("resent", True)]
    assert len(j.inner.events(PID)) == 1


async def test_stall_holds_the_call_until_the_gate_opens() -> None:
    gate = asyncio.Event()
    j = fk.FaultyJournal(InMemoryJournal(), [fk.stall(gate, "highest", after=True)])
    await j.append([ev(1, "a")])
    task = asyncio.ensure_future(j.highest_sequence_nr(PID))
    await turns()
    assert not task.done()
    gate.set()
    assert await task == 1


async def test_delay_yields_and_still_runs_the_call() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.delay(0.01)])
    loop = asyncio.get_running_loop()
    t = loop.time()
    await j.append([ev(1, "a")])
    assert loop.time() - t >= 0.009 and len(j.inner.events(PID)) == 1


async def test_timeout_may_land_later() -> None:
    land = asyncio.Event()
    j = fk.FaultyJournal(InMemoryJournal(), [fk.timeout(), fk.timeout(land=land, nth=2)])
    with pytest.raises(JournalOutcomeUnknownError):
        await j.append([ev(1, "a")])
    await turns()
    assert j.inner.events(PID) == []  # a plain timeout never lands
    with pytest.raises(JournalOutcomeUnknownError):
        await j.append([ev(1, "b")])
    assert j.inner.events(PID) == []
    land.set()
    await turns()
    assert [(w.how, w.stored) for w in j.writes] == [("late", True)]
    assert len(j.inner.events(PID)) == 1


async def test_tag_crash_loses_tag_rows_until_repaired() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.tag_crash()])
    with pytest.raises(JournalOutcomeUnknownError):
        await j.append([ev(1, "a"), ev(2, "b")])
    assert len(j.inner.events(PID)) == 2
    assert [te async for te in j.events_by_tag("ledger")] == []
    assert await j.repair_tags(j.inner.events(PID)) == 2
    assert [te.event.sequence_nr async for te in j.events_by_tag("ledger")] == [1, 2]


async def test_tag_crash_with_a_gate_is_a_writer_dying_between_events_and_tags() -> None:
    gate = asyncio.Event()
    j = fk.FaultyJournal(InMemoryJournal(), [fk.tag_crash(gate=gate)])
    task = asyncio.ensure_future(j.append([ev(1, "a")]))
    await turns()
    assert not task.done() and len(j.inner.events(PID)) == 1  # stored, writer "dead"
    assert [te async for te in j.events_by_tag("ledger")] == []
    task.cancel()  # the process is gone: its append never answers
    await asyncio.gather(task, return_exceptions=True)
    assert j.lost_tags == {(PID, 1)}


async def test_interleave_runs_a_second_writer_at_the_point() -> None:
    order: list[str] = []
    inner = InMemoryJournal()

    async def second_writer() -> None:
        order.append("second writer")
        await inner.append([ev(1, "rival", writer="w2")])

    j = fk.FaultyJournal(inner, [fk.interleave(second_writer, "highest")])
    assert await j.highest_sequence_nr(PID) == 1  # ran before the read
    assert order == ["second writer"]


async def test_interleave_after_replay_and_scripting_by_nth_and_id() -> None:
    seen: list[int] = []
    inner = InMemoryJournal()
    await inner.append([ev(1, "a")])
    j = fk.FaultyJournal(
        inner,
        [
            fk.interleave(lambda: _note(seen, inner), "replay", after=True),
            fk.fail("highest", nth=2, persistence_id=PID),
            fk.fail("highest", persistence_id="ledger|other"),
        ],
    )
    assert [e.sequence_nr async for e in j.replay(PID)] == [1]
    assert seen == [1]
    assert await j.highest_sequence_nr(PID) == 1  # call 1: no fault
    with pytest.raises(JournalUnavailableError):
        await j.highest_sequence_nr(PID)  # call 2
    assert j.calls["highest"] == 2


async def _note(seen: list[int], inner: InMemoryJournal) -> None:
    seen.append(await inner.highest_sequence_nr(PID))


async def test_seeded_faults_are_reproducible() -> None:
    async def run(seed: int) -> list[int]:
        j = fk.FaultyJournal(InMemoryJournal(), [fk.fail(probability=0.5, times=None)], seed=seed)
        failed = []
        for seq in range(1, 40):
            try:
                await j.append([ev(len(j.inner.events(PID)) + 1, f"op{seq}")])
            except JournalUnavailableError:
                failed.append(seq)
        return failed

    a, b = await run(7), await run(7)
    assert a == b and 5 < len(a) < 35


async def test_faulty_snapshot_store() -> None:
    inner = InMemorySnapshotStore()
    s = fk.FaultySnapshotStore(
        inner,
        [
            fk.fail("snapshot.save"),
            fk.lose_response("snapshot.save", nth=2),
            fk.fail("snapshot.load", nth=1),
        ],
    )
    snap = StoredSnapshot(PID, 3, b"x", "m", 1, T0)
    with pytest.raises(JournalUnavailableError):
        await s.save(snap)
    assert inner.snapshots(PID) == []
    with pytest.raises(JournalOutcomeUnknownError):
        await s.save(snap)
    assert inner.snapshots(PID) == [snap]
    with pytest.raises(JournalUnavailableError):
        await s.load(PID)
    assert await s.load(PID) == snap


def test_bad_fault_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        fk.Fault("explode")
    with pytest.raises(ValueError, match="unknown point"):
        fk.fail("commit")
    with pytest.raises(ValueError, match="needs a gate"):
        fk.Fault("stall")
    with pytest.raises(ValueError, match="tag_crash applies to append"):
        fk.tag_crash("replay")


# ---------------------------------------------------------------------------- the checker


async def check(journal, observations, **kw):
    kw.setdefault("expected_reply", lambda _cmd, state: state.balance)
    return await check_history(
        observations,
        journal,
        aggregate_type=LEDGER,
        serialization=SER,
        persistence_ids=[PID],
        command_of=lambda e: e.op_id,
        **kw,
    )


async def test_a_sound_history_has_no_violation() -> None:
    j = InMemoryJournal()
    await j.append([ev(1, "op1")])
    await j.append([ev(2, "op2", 2), ev(3, "op3", 3)])
    obs = [
        Observation("op1", "ok", 1),
        Observation("op2", "ok", 3),
        Observation("op3", "ok", 6),
        Observation("op4", "not_applied"),
        Observation("op5", "rejected"),
        Observation("op6", "unknown"),
    ]
    assert await check(j, obs, live=[LiveState(PID, 3, LedgerState(6, 3))]) == []


async def test_a_doubled_command_is_flagged() -> None:
    j = InMemoryJournal()  # op2 stored at #2 and at #3; the caller saw one reply
    await j.append([ev(1, "op1")])
    await j.append([ev(2, "op2", 5)])
    await j.append([ev(3, "op2", 5, writer="w2")])
    obs = [
        Observation("op1", "ok", 1),
        Observation("op2", "not_applied"),
        Observation("op2", "ok", 11),
    ]
    vs = await check(j, obs)
    assert [v.kind for v in vs] == ["applied_twice"]
    assert vs[0].sequence_nrs == (2, 3) and "applied 2 times" in vs[0].message


async def test_a_lost_ack_is_flagged() -> None:
    j = InMemoryJournal()
    await j.append([ev(1, "op1")])
    vs = await check(j, [Observation("op1", "ok", 1), Observation("op2", "ok", 2, "alice")])
    assert [(v.kind, v.command_id) for v in vs] == [("lost_ack", "op2")]
    assert "alice" in vs[0].message


async def test_not_applied_but_stored_unknown_twice_and_phantom_are_flagged() -> None:
    j = InMemoryJournal()
    await j.append([ev(1, "op1"), ev(2, "op2"), ev(3, "op2"), ev(4, "ghost")])
    obs = [Observation("op1", "not_applied"), Observation("op2", "unknown")]
    vs = await check(j, obs, expected_reply=None)
    assert sorted(v.kind for v in vs) == ["not_applied_present", "phantom", "unknown_applied_twice"]


async def test_an_interleaving_is_flagged() -> None:
    # A appends op2 at #2 while B, recovered at #1, missed it; B decides op3 on a stale state
    # and writes #3 (no number is taken twice, so only the fold exposes it)
    j = InMemoryJournal()
    await j.append([ev(1, "op1", 1, "A")])
    await j.append([ev(2, "op2", 2, "A")])
    await j.append([ev(3, "op3", 4, "B")])
    obs = [
        Observation("op1", "ok", 1),
        Observation("op2", "ok", 3),
        Observation("op3", "ok", 5, "carol"),
    ]
    vs = await check(j, obs, live=[LiveState(PID, 3, LedgerState(5, 2), "B")])
    assert [v.kind for v in vs] == ["reply_mismatch", "state_mismatch"]
    assert "carol got 5" in vs[0].message and "gives 7" in vs[0].message
    assert "activation B at #3" in vs[1].message


async def test_two_writers_on_one_number_are_flagged() -> None:
    j = fk.FaultyJournal(InMemoryJournal(fencing=False))  # no guard: the second overwrites
    await j.append([ev(1, "op1", writer="A")])
    await j.append([ev(1, "op2", writer="B")])
    obs = [Observation("op1", "ok", 1), Observation("op2", "ok", 1)]
    vs = await check(j, obs, writes=j.writes, expected_reply=None)
    kinds = sorted(v.kind for v in vs)
    assert "two_writers" in kinds and "lost_ack" in kinds
    assert "written by activation A and by activation B" in str(vs)


async def test_a_missing_tag_row_and_an_uncategorized_error_are_flagged() -> None:
    j = fk.FaultyJournal(InMemoryJournal(), [fk.tag_crash()])
    with pytest.raises(JournalOutcomeUnknownError):
        await j.append([ev(1, "op1")])
    obs = [Observation("op1", "unknown"), Observation("op2", "uncategorized", RuntimeError())]
    vs = await check(j, obs)
    assert sorted(v.kind for v in vs) == ["missing_tag", "uncategorized"]
    assert "#1 stored but not in the stream of tag 'ledger'" in str(vs)
    with pytest.raises(AssertionError, match="2 violation"):
        assert_no_violations(vs, {"schedule": "tag_crash"})


def test_classify_follows_the_error_categories() -> None:
    assert classify(None) == "ok"
    assert classify(CommandRejected("no")) == "rejected"
    for e in (PersistFailedError("x"), AggregateStoppedError("x")):
        assert classify(e) == "not_applied"
    for e in (WriteOutcomeUnknownError("x"), HostCrashedError("x"), TimeoutError()):
        assert classify(e) == "unknown"
    assert classify(RuntimeError("bug")) == "uncategorized"


async def test_history_records_every_attempt_through_the_real_core() -> None:
    journal = fk.FaultyJournal(InMemoryJournal(), [fk.lose_response(nth=2), fk.fail(nth=3)])
    core = EntityCore(LEDGER, "acct", journal, InMemorySnapshotStore(), SER, writer_id="w1")
    h = History()
    await h.ask("op1", core.handle(Append("op1", 1)))
    await h.ask("op2", core.handle(Append("op2", 2)))  # lost response: acknowledged after re-read
    await h.ask("op3", core.handle(Append("op3", 3)))  # failed before send: not applied
    await h.ask("op4", core.handle(Append("op4", -1)))  # rejected
    assert [o.outcome for o in h.observations] == ["ok", "ok", "not_applied", "rejected"]
    vs = await check(
        journal, h, live=[LiveState(PID, core.sequence_nr, core.state)], writes=journal.writes
    )
    assert vs == []
    await core.stop()


async def test_a_keyed_command_is_stored_at_most_once_whatever_its_attempts() -> None:
    """Issue 23, item 10: under an idempotency key the bound is one application, not the
    attempts' count. A keyed command re-sent with a fresh key per attempt (a caller bug the
    key rule alone cannot see: two distinct keys) is applied twice with one reply and one
    unknown attempt: flagged, although ``S <= A + U``. Without a key the same history is
    sound (two attempts may both apply)."""
    from raysource.runtime.idempotency import KEY_FIELD

    def keyed(seq: int, op: str, key: str | None) -> StoredEvent:
        e = ev(seq, op, 5)
        return dataclasses.replace(e, metadata={KEY_FIELD: key} if key else {})

    obs = [Observation("op1", "ok", 5), Observation("op1", "unknown")]
    for keys, want in (((None, None), []), (("k-a", "k-b"), ["applied_twice"])):
        j = InMemoryJournal()
        await j.append([keyed(1, "op1", keys[0])])
        await j.append([keyed(2, "op1", keys[1])])
        vs = await check(j, obs, expected_reply=None)
        assert [v.kind for v in vs] == want, (keys, vs)
    assert "under a key" in str(vs[0])
