"""Unit tests of the entity core on the in-memory journal (no Ray)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.journal.api import StoredSnapshot
from raysource.journal.errors import (
    ConcurrentWriteError,
    CorruptPayloadError,
    PayloadTooLargeError,
    UnserializableError,
)
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, none, persist, reject, reply
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import (
    AggregateStoppedError,
    CommandRejected,
    HandlerError,
    PersistFailedError,
    UnknownCommandError,
)
from raysource.snapshots.memory import InMemorySnapshotStore

# --------------------------------------------------------------------------- a test aggregate


@dataclass(frozen=True)
class Add:
    n: int


@dataclass(frozen=True)
class AddMany:
    ns: tuple[int, ...]


@dataclass(frozen=True)
class Take:
    n: int


@dataclass(frozen=True)
class Get:
    pass


@dataclass(frozen=True)
class Nothing:
    pass


@dataclass(frozen=True)
class Boom:
    pass


@dataclass(frozen=True)
class Unstorable:
    pass


@dataclass(frozen=True)
class Huge:
    pass


@dataclass(frozen=True)
class Added:
    n: int


@dataclass(frozen=True)
class Blob:
    data: str


@dataclass
class NotRegistered:
    x: int


@dataclass(frozen=True)
class Acct:
    total: int = 0
    items: tuple[int, ...] = ()


def decide(state: Acct, cmd: object):
    match cmd:
        case Add(n=n):
            return persist(Added(n), reply=lambda s: s.total)
        case AddMany(ns=ns):
            return persist(*(Added(n) for n in ns), reply=lambda s: s.total)
        case Take(n=n):
            if n > state.total:
                return reject(f"only {state.total} left")
            return persist(Added(-n), reply=lambda s: s.total)
        case Get():
            return reply(state)
        case Nothing():
            return none()
        case Boom():
            raise RuntimeError("kaboom")
        case Unstorable():
            return persist(NotRegistered(1))
        case Huge():
            return persist(Blob("x" * 60_000))
        case "not an effect":
            return 42
        case _:
            raise UnknownCommandError(f"unknown {cmd!r}")


def apply(state: Acct, ev: object) -> Acct:
    match ev:
        case Added(n=n):
            return Acct(state.total + n, state.items + (n,))
        case Blob():
            return state
        case NotRegistered():
            return state
    raise TypeError(ev)


ACCT = AggregateType(
    "acct",
    Acct(),
    decide,
    apply,
    tagger=lambda e: {"acct"},
    events=(Added, Blob),
    commands=(Add, AddMany, Take, Get),
    types=(Acct,),
)
SNAPPY = replace(ACCT, snapshot=SnapshotPolicy(every_n_events=100, keep=2))


def make_ser() -> Serialization:
    ser = Serialization(max_payload_bytes=50_000)
    ACCT.register_types(ser)
    return ser


def make_core(journal=None, snaps=None, agg=ACCT, *, ser=None, writer="w1", **kw) -> EntityCore:
    return EntityCore(
        agg,
        "1",
        journal if journal is not None else InMemoryJournal(),
        snaps if snaps is not None else InMemorySnapshotStore(),
        ser or make_ser(),
        writer_id=writer,
        **kw,
    )


class HeldJournal(InMemoryJournal):
    """The first append waits at ``release`` once it has begun (``begun`` is set): a write
    that is certainly in flight, whatever the machine's speed."""

    def __init__(self) -> None:
        super().__init__()
        self.begun, self.release = asyncio.Event(), asyncio.Event()

    async def append(self, events):  # noqa: ANN001
        if not self.begun.is_set():
            self.begun.set()
            await self.release.wait()
        return await super().append(events)


def journal_totals(journal: InMemoryJournal, ser: Serialization, pid="acct|1") -> list[int]:
    return [ser.decode(e.serializer_id, e.manifest, e.payload).n for e in journal.events(pid)]


class GatedJournal(InMemoryJournal):
    """Appends wait until ``gate`` is set."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def append(self, events):
        self.entered.set()
        await self.gate.wait()
        await super().append(events)


async def settle(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- effects


async def test_effects():
    journal = InMemoryJournal()
    core = make_core(journal)
    assert await core.handle(Add(5)) == 5
    assert await core.handle(AddMany((1, 2, 3))) == 11
    assert journal.write_count == 2  # the three events of AddMany went in one append
    appends = journal.stats["append"]
    assert await core.handle(Get()) == Acct(11, (5, 1, 2, 3))
    assert await core.handle(Nothing()) is None
    with pytest.raises(CommandRejected) as info:
        await core.handle(Take(100))
    assert info.value.reason == "only 11 left"
    assert journal.stats["append"] == appends  # read-only, no-op and rejection: no journal write
    with pytest.raises(UnknownCommandError):  # typed CommandErrors pass through unchanged
        await core.handle("what")
    with pytest.raises(HandlerError, match="not an Effect"):
        await core.handle("not an effect")
    assert core.sequence_nr == 4 and core.state.total == 11
    assert [e.tags for e in journal.events("acct|1")] == [frozenset({"acct"})] * 4
    assert {e.writer_id for e in journal.events("acct|1")} == {"w1"}
    await core.stop()


async def test_side_effects_run_only_after_durability():
    journal = GatedJournal()
    seen: list[int] = []

    def decide_with_side_effect(state, cmd):
        return persist(Added(cmd.n), then=lambda st: seen.append(st.total))

    agg = replace(ACCT, command_handler=decide_with_side_effect)
    core = make_core(journal, agg=agg)
    task = asyncio.create_task(core.handle(Add(3)))
    await journal.entered.wait()
    await settle()
    assert seen == []
    journal.gate.set()
    await task
    assert seen == [3]
    journal.fail_next_appends(1)
    with pytest.raises(PersistFailedError):
        await core.handle(Add(4))
    assert seen == [3]
    await core.stop()


# --------------------------------------------------------------------------- group commit


async def test_group_commit_with_50_concurrent_commands():
    journal = InMemoryJournal(latency=0.02)
    ser = make_ser()
    core = make_core(journal, ser=ser)
    await core.start()
    replies = await asyncio.gather(*(core.handle(Add(1)) for _ in range(50)))
    assert replies == list(range(1, 51))  # each reply reflects exactly the commands before it
    assert journal.write_count <= 5, journal.write_count  # group commit: appends << commands
    assert [e.sequence_nr for e in journal.events("acct|1")] == list(range(1, 51))
    assert core.state.total == 50 and core.stats.commands == 50
    assert core.stats.writes == journal.write_count
    await core.stop()


async def test_commands_queued_during_a_write_form_the_next_flush():
    journal = HeldJournal()
    ser = make_ser()
    core = make_core(journal, ser=ser)
    await core.start()
    first = asyncio.create_task(core.handle(Add(1)))
    await journal.begun.wait()  # the first write is in flight now
    rest = [asyncio.create_task(core.handle(Add(i))) for i in range(2, 12)]
    rejected = asyncio.create_task(core.handle(Take(10_000)))
    query = asyncio.create_task(core.handle(Get()))
    for _ in range(10):  # the queued commands reach the mailbox while the write is held
        await asyncio.sleep(0)
    journal.release.set()
    await asyncio.gather(first, *rest)
    assert journal.write_count == 2
    with pytest.raises(CommandRejected):
        await rejected
    assert (await query).total == sum(range(1, 12))
    assert journal_totals(journal, ser) == list(range(1, 12))
    await core.stop()


async def test_max_batch_bounds_a_flush():
    journal = InMemoryJournal(latency=0.01)
    core = make_core(journal, max_batch=10)
    await core.start()
    await asyncio.gather(*(core.handle(Add(1)) for _ in range(50)))
    assert journal.write_count >= 5
    await core.stop()


async def test_writes_are_bounded_without_splitting_a_command():
    journal, ser = InMemoryJournal(latency=0.005, max_group_size=5), make_ser()
    core = make_core(journal, ser=ser, max_events_per_write=5)
    await core.start()
    results = await asyncio.gather(
        *(core.handle(AddMany((1, 1))) for _ in range(20)),
        core.handle(AddMany((1,) * 6)),  # alone too big for the journal: fails on its own
        core.handle(Add(1)),
        return_exceptions=True,
    )
    assert results[:20] == list(range(2, 42, 2))
    assert isinstance(results[20], PersistFailedError)
    assert results[21] == 41
    assert journal_totals(journal, ser) == [1] * 41
    assert journal.write_count >= 10  # at most two commands of two events per write
    await core.stop()


async def test_writes_are_bounded_by_bytes():
    journal = InMemoryJournal()
    core = make_core(journal, max_bytes_per_write=30)  # one Added event is 7 bytes: 4 per write
    await core.start()
    await asyncio.gather(*(core.handle(Add(1)) for _ in range(9)))
    assert journal.write_count == 3
    await core.stop()


# --------------------------------------------------------------------------- durability


async def test_no_reply_before_the_write_is_durable():
    journal = GatedJournal()
    core = make_core(journal)
    tasks = [
        asyncio.create_task(core.handle(Add(2))),
        asyncio.create_task(core.handle(Take(1000))),  # rejection, released with the flush
        asyncio.create_task(core.handle(Get())),  # read-only, but depends on the pending Add
    ]
    await journal.entered.wait()
    await asyncio.sleep(0.02)
    assert not any(t.done() for t in tasks)
    assert core.state == Acct() and core.sequence_nr == 0  # nothing unacknowledged visible
    journal.gate.set()
    assert await tasks[0] == 2
    with pytest.raises(CommandRejected):
        await tasks[1]
    assert await tasks[2] == Acct(2, (2,))
    await core.stop()


async def test_replies_of_a_flush_without_events_do_not_wait():
    journal = GatedJournal()
    core = make_core(journal)
    assert await asyncio.wait_for(core.handle(Get()), 1) == Acct()
    assert journal.stats["append"] == 0
    await core.stop()


async def test_write_failure_fails_the_whole_flush_and_rebuilds_state():
    journal = InMemoryJournal(latency=0.01)
    ser = make_ser()
    core = make_core(journal, ser=ser)
    assert await core.handle(Add(1)) == 1
    journal.fail_next_appends(1)
    results = await asyncio.gather(
        core.handle(Add(2)),
        core.handle(Get()),
        core.handle(Take(1000)),
        core.handle(Add(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, PersistFailedError) for r in results), results
    assert core.state == Acct(1, (1,)) and core.sequence_nr == 1
    assert journal_totals(journal, ser) == [1]
    assert await core.handle(Add(10)) == 11  # alive
    await core.stop()


async def test_a_failed_write_that_landed_is_acknowledged():
    journal = InMemoryJournal()
    ser = make_ser()
    core = make_core(journal, ser=ser)
    journal.fail_next_appends(1, after_write=True)  # stored, but the writer got a timeout
    assert await core.handle(Add(7)) == 7  # the re-read finds our events: a success
    assert core.state == Acct(7, (7,)) and core.sequence_nr == 1
    assert core.stats.failed_writes == 1 and core.stats.failed_commands == 0
    assert await core.handle(Add(1)) == 8
    assert journal_totals(journal, ser) == [7, 1]
    await core.stop()


async def test_failed_rebuild_stops_the_core():
    class FlakyJournal(InMemoryJournal):
        broken = False

        async def highest_sequence_nr(self, pid):
            if self.broken:
                raise OSError("down")
            return await super().highest_sequence_nr(pid)

    journal = FlakyJournal()
    core = make_core(journal)
    await core.start()
    journal.broken = True
    journal.fail_next_appends(1)
    with pytest.raises(PersistFailedError, match="could not be re-read"):
        await core.handle(Add(1))
    await settle()
    assert core.stopped
    with pytest.raises(AggregateStoppedError):
        await core.handle(Add(1))


# --------------------------------------------------------------------------- fencing


async def test_fencing_stops_the_activation_and_fails_queued_commands():
    journal = HeldJournal()
    journal.begun.set()  # the fresh writer's append is not held
    ser = make_ser()
    stale = make_core(journal, ser=ser, writer="stale")
    await stale.start()
    fresh = make_core(journal, ser=ser, writer="fresh")
    assert await fresh.handle(Add(100)) == 100  # takes sequence number 1
    journal.begun.clear()  # hold the stale writer's first append
    first = asyncio.create_task(stale.handle(Add(1)))
    await journal.begun.wait()  # its write is in flight
    queued = [asyncio.create_task(stale.handle(Add(i))) for i in range(3)]
    for _ in range(10):
        await asyncio.sleep(0)
    journal.release.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, AggregateStoppedError) for r in results), results
    assert isinstance(results[0].__cause__, ConcurrentWriteError)
    assert stale.stopped
    with pytest.raises(AggregateStoppedError) as info:
        await stale.handle(Get())
    assert isinstance(info.value.__cause__, ConcurrentWriteError)
    await stale.stop()  # idempotent on a fenced core
    assert journal_totals(journal, ser) == [100]  # the stale writer wrote nothing
    assert [e.writer_id for e in journal.events("acct|1")] == ["fresh"]
    assert await fresh.handle(Add(1)) == 101
    await fresh.stop()


# --------------------------------------------------------------------------- bad input


async def test_handler_exception_leaves_the_aggregate_alive():
    core = make_core()
    await core.handle(Add(1))
    results = await asyncio.gather(
        core.handle(Add(1)), core.handle(Boom()), core.handle(Add(1)), return_exceptions=True
    )
    assert results[0] == 2 and results[2] == 3
    assert isinstance(results[1], HandlerError)
    assert isinstance(results[1].__cause__, RuntimeError)
    with pytest.raises(HandlerError, match="kaboom"):
        await core.handle(Boom())
    assert core.state.total == 3
    assert await core.handle(Add(1)) == 4
    await core.stop()


async def test_event_handler_exception_is_a_handler_error():
    def bad_apply(state, ev):
        if ev.n < 0:
            raise ValueError("negative")
        return apply(state, ev)

    core = make_core(agg=replace(ACCT, event_handler=bad_apply))
    assert await core.handle(Add(2)) == 2
    with pytest.raises(HandlerError, match="negative"):
        await core.handle(AddMany((1, -1)))  # atomic: the 1 is not kept either
    assert core.state == Acct(2, (2,)) and core.sequence_nr == 1
    await core.stop()


async def test_unserializable_event_fails_only_that_command():
    journal = InMemoryJournal()
    ser = make_ser()
    core = make_core(journal, ser=ser)
    results = await asyncio.gather(
        core.handle(Add(1)),
        core.handle(Unstorable()),
        core.handle(Huge()),
        core.handle(Add(2)),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[3] == 3
    assert isinstance(results[1], UnserializableError)
    assert isinstance(results[2], PayloadTooLargeError)
    assert results[1].persistence_id == "acct|1"
    assert journal_totals(journal, ser) == [1, 2]  # sequence numbers stay gap-free
    assert [e.sequence_nr for e in journal.events("acct|1")] == [1, 2]
    assert await core.handle(Add(3)) == 6
    await core.stop()


# --------------------------------------------------------------------------- recovery


async def run_1000(core: EntityCore) -> None:
    for i in range(1000):
        if i % 7 == 3:
            with pytest.raises(CommandRejected):
                await core.handle(Take(10**9))
        else:
            await core.handle(Add(i))
    await core.stop()


EXPECTED_1000 = [i for i in range(1000) if i % 7 != 3]


async def test_1000_commands_then_full_replay():
    journal, snaps, ser = InMemoryJournal(), InMemorySnapshotStore(), make_ser()
    core = make_core(journal, snaps, ser=ser)
    await run_1000(core)
    assert journal_totals(journal, ser) == EXPECTED_1000
    fresh = make_core(journal, snaps, ser=ser, writer="w2")
    stats = await fresh.start()
    assert fresh.state == core.state and fresh.sequence_nr == len(EXPECTED_1000)
    assert stats.snapshot_sequence_nr is None and stats.events_replayed == len(EXPECTED_1000)
    assert stats.duration_s >= 0
    await fresh.stop()


async def test_1000_commands_with_snapshots():
    journal, snaps, ser = InMemoryJournal(), InMemorySnapshotStore(), make_ser()
    core = make_core(journal, snaps, agg=SNAPPY, ser=ser)
    await run_1000(core)
    n = len(EXPECTED_1000)  # 857
    assert [s.sequence_nr for s in snaps.snapshots("acct|1")] == [700, 800]  # keep=2
    fresh = make_core(journal, snaps, agg=SNAPPY, ser=ser, writer="w2")
    stats = await fresh.start()
    assert fresh.state == core.state and fresh.sequence_nr == n
    assert stats.snapshot_sequence_nr == 800 and stats.events_replayed == n - 800
    await fresh.stop()


async def corrupt(snaps: InMemorySnapshotStore, seq: int) -> None:
    good = next(s for s in snaps.snapshots("acct|1") if s.sequence_nr == seq)
    await snaps.save(replace(good, payload=b"\x00garbage"))


async def test_corrupt_newest_snapshot_falls_back_to_older_then_full_replay():
    journal, snaps, ser = InMemoryJournal(), InMemorySnapshotStore(), make_ser()
    core = make_core(journal, snaps, agg=SNAPPY, ser=ser)
    await run_1000(core)
    await corrupt(snaps, 800)
    fresh = make_core(journal, snaps, agg=SNAPPY, ser=ser, writer="w2")
    stats = await fresh.start()
    assert fresh.state == core.state
    assert stats.snapshot_sequence_nr == 700 and stats.snapshots_skipped == 1
    assert stats.events_replayed == len(EXPECTED_1000) - 700
    await fresh.stop()

    await corrupt(snaps, 700)
    fresh = make_core(journal, snaps, agg=SNAPPY, ser=ser, writer="w3")
    stats = await fresh.start()
    assert fresh.state == core.state
    assert stats.snapshot_sequence_nr is None and stats.snapshots_skipped == 2
    assert stats.events_replayed == len(EXPECTED_1000)
    await fresh.stop()


async def test_snapshot_ahead_of_the_journal_is_ignored():
    journal, snaps, ser = InMemoryJournal(), InMemorySnapshotStore(), make_ser()
    core = make_core(journal, snaps, ser=ser)
    await core.handle(Add(1))
    await core.stop()
    _, manifest, payload = ser.encode(Acct(999, ()))
    when = journal.events("acct|1")[0].timestamp
    await snaps.save(StoredSnapshot("acct|1", 50, payload, manifest, 1, when))
    fresh = make_core(journal, snaps, ser=ser)
    stats = await fresh.start()
    assert fresh.state == Acct(1, (1,)) and fresh.sequence_nr == 1
    assert stats.snapshot_sequence_nr is None
    await fresh.stop()


async def test_snapshot_predicate_and_snapshot_failures():
    journal, snaps, ser = InMemoryJournal(), InMemorySnapshotStore(), make_ser()
    agg = replace(ACCT, snapshot=SnapshotPolicy(predicate=lambda s, e: e.n == 0, keep=5))
    core = make_core(journal, snaps, agg=agg, ser=ser)
    await core.handle(Add(1))
    assert snaps.snapshots("acct|1") == []
    await core.handle(AddMany((0, 2)))
    assert [s.sequence_nr for s in snaps.snapshots("acct|1")] == [3]
    (snap,) = snaps.snapshots("acct|1")
    assert ser.decode(snap.serializer_id, snap.manifest, snap.payload) == core.state
    snaps.fail_next_saves(1)
    assert await core.handle(Add(0)) == 3  # a failed snapshot never fails the command
    assert core.stats.snapshot_failures == 1 and core.stats.snapshots == 1
    await core.stop()


async def test_commands_wait_for_recovery():
    journal, ser = InMemoryJournal(), make_ser()
    core = make_core(journal, ser=ser)
    for i in range(1, 4):
        await core.handle(Add(i))
    await core.stop()
    journal.latency = 0.02
    fresh = make_core(journal, ser=ser)
    # sent before (and while) recovery runs: processed against the recovered state
    replies = await asyncio.gather(fresh.handle(Add(10)), fresh.handle(Get()))
    assert replies == [16, Acct(16, (1, 2, 3, 10))]
    await fresh.stop()


async def test_undecodable_event_fails_recovery_and_stops_the_core():
    journal, ser = InMemoryJournal(), make_ser()
    core = make_core(journal, ser=ser)
    await core.handle(Add(1))
    await core.stop()
    other = Serialization()  # does not know the event type
    fresh = make_core(journal, ser=other)
    pending = asyncio.create_task(fresh.handle(Add(1)))
    with pytest.raises(Exception) as info:
        await fresh.start()
    assert "acct" in str(info.value) and "1" in str(info.value)
    with pytest.raises(AggregateStoppedError):
        await pending
    assert fresh.stopped


async def test_corrupt_event_names_the_record():
    journal, ser = InMemoryJournal(), make_ser()
    core = make_core(journal, ser=ser)
    await core.handle(Add(1))
    await core.stop()
    journal._events["acct|1"][1] = replace(journal.events("acct|1")[0], payload=b"{")
    fresh = make_core(journal, ser=ser)
    with pytest.raises(CorruptPayloadError) as info:
        await fresh.start()
    assert info.value.persistence_id == "acct|1" and info.value.sequence_nr == 1


async def test_deleted_history_never_reuses_sequence_numbers():
    journal, ser = InMemoryJournal(), make_ser()
    core = make_core(journal, ser=ser)
    await core.handle(AddMany((1, 2, 3)))
    await core.stop()
    await journal.delete_to("acct|1", 3)
    fresh = make_core(journal, ser=ser)
    await fresh.start()
    assert fresh.sequence_nr == 3
    assert await fresh.handle(Add(5)) == 5
    assert [e.sequence_nr for e in journal.events("acct|1")] == [1, 2, 3, 4]
    await fresh.stop()


# --------------------------------------------------------------------------- lifecycle


async def test_stop_finishes_queued_work_then_refuses():
    journal = InMemoryJournal(latency=0.01)
    core = make_core(journal)
    tasks = [asyncio.create_task(core.handle(Add(1))) for _ in range(5)]
    await settle()
    await core.stop()
    assert [t.result() for t in tasks] == [1, 2, 3, 4, 5]
    with pytest.raises(AggregateStoppedError):
        await core.handle(Add(1))
    await core.stop()


async def test_last_activity_and_stats():
    now = [100.0]
    core = make_core(clock=lambda: now[0])
    assert core.last_activity == 100.0
    now[0] = 105.0
    await core.handle(Add(1))
    assert core.last_activity == 105.0
    await core.handle(Get())
    s = core.stats
    assert (s.commands, s.flushes, s.writes, s.events, s.recoveries) == (2, 2, 1, 1, 1)
    await core.stop()


async def test_idle_tracks_queued_and_in_flight_work():
    journal = GatedJournal()
    core = make_core(journal)
    await core.start()
    assert core.idle
    task = asyncio.create_task(core.handle(Add(1)))
    await journal.entered.wait()
    assert not core.idle
    queued = asyncio.create_task(core.handle(Add(1)))
    await settle()
    assert core.queued == 1
    journal.gate.set()
    await asyncio.gather(task, queued)
    await settle()
    assert core.idle
    await core.stop()


async def test_a_bug_in_the_loop_fails_callers_instead_of_hanging(monkeypatch):
    core = make_core()
    await core.start()

    def broken(*a, **k):
        raise AttributeError("bug")

    monkeypatch.setattr(core.decider, "decide", broken)
    with pytest.raises(AggregateStoppedError):
        await asyncio.wait_for(core.handle(Add(1)), 1)
    assert core.stopped


async def test_a_cancelled_caller_is_skipped():
    journal = GatedJournal()
    core = make_core(journal)
    first = asyncio.create_task(core.handle(Add(1)))
    await journal.entered.wait()
    second = asyncio.create_task(core.handle(Add(2)))
    await settle()
    second.cancel()
    journal.gate.set()
    assert await first == 1
    assert await core.handle(Get()) == Acct(1, (1,))
    await core.stop()


# --------------------------------------------------------------------------- model check

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_commands = st.lists(
    st.one_of(
        st.builds(Add, st.integers(0, 5)),
        st.builds(Take, st.integers(0, 8)),
        st.just(Get()),
        st.just(Boom()),
        st.builds(AddMany, st.lists(st.integers(0, 3), max_size=3).map(tuple)),
    ),
    max_size=40,
)


def _model(commands):
    """The sequential meaning of a command list: one at a time on the pure aggregate."""
    state, replies = Acct(), []
    for c in commands:
        try:
            eff = decide(state, c)
        except Exception as exc:
            replies.append(type(exc))
            continue
        if hasattr(eff, "events"):
            state = ACCT.apply(state, eff.events)
            replies.append(eff.reply_for(state))
        elif hasattr(eff, "reason"):
            replies.append(CommandRejected)
        else:
            replies.append(getattr(eff, "value", None))
    return state, replies


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_commands, st.sampled_from([1, 3, 256]))
def test_concurrent_commands_mean_the_same_as_sequential_ones(commands, max_batch):
    async def scenario():
        journal, ser = InMemoryJournal(latency=0.001), make_ser()
        core = make_core(journal, ser=ser, max_batch=max_batch)
        results = await asyncio.gather(*(core.handle(c) for c in commands), return_exceptions=True)
        fresh = make_core(journal, ser=ser, writer="w2")
        await fresh.start()
        await core.stop()
        return core.state, results, fresh.state

    state, results, recovered = asyncio.run(scenario())
    expected_state, expected = _model(commands)
    got = [type(r) if isinstance(r, Exception) else r for r in results]
    expected = [HandlerError if e is RuntimeError else e for e in expected]
    assert got == expected
    assert state == expected_state == recovered
