"""The read side on real Ray and a real Cassandra: streams, projection workers (Ray actors),
offsets, failures, slices and the reservations-by-customer view.

Events are written by real entity cores (the test kit on the Cassandra journal). Every test
uses its own tag (an aggregate type derived from the seat example), except the view test,
which uses the example's own ``SHOW`` type and ``"show"`` tag. The tag query's visibility delay
is 0.5 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

import cloudpickle
import pytest
import ray
import ray.cloudpickle as ray_cloudpickle
from readside_idle import until_caught_up

from raysource.examples.reservations_view import (
    VIEW_TABLE,
    reservations_of,
    reservations_projection,
)
from raysource.examples.seats import SHOW, CancelReservation, ReserveSeat, SeatReserved, seat_label
from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.readside.errors import ProjectionError
from raysource.readside.offsets import CassandraOffsetStore
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import (
    EventStreams,
    ProjectionHandler,
    ProjectionSettings,
    ProjectionSpec,
    offset_from_str,
    offset_to_str,
    slice_of,
    worker_key,
)
from raysource.runtime.aggregate import AggregateType
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.testkit import AggregateTestKit

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

DELAY = 0.5
FAST = ProjectionSettings(
    poll_interval=0.1,
    commit_every=10,
    commit_interval=0.3,
    retry_attempts=3,
    retry_backoff=0.05,
    retry_backoff_max=0.2,
)


@dataclass(frozen=True)
class TagAs:
    tag: str

    def __call__(self, event: object) -> frozenset[str]:
        return frozenset({self.tag})


def show_type(tag: str) -> AggregateType:
    """The seat aggregate under another type name, tagging every event ``tag``."""
    return dataclasses.replace(SHOW, name=f"show{tag}", tagger=TagAs(tag))


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, eventual_consistency_delay=DELAY
    )


@pytest.fixture
async def journal(config):
    j = await CassandraJournal.connect(config, create_schema=True)
    yield j
    await j.close()


@pytest.fixture
async def session(config):
    async with CassandraSession(config) as s:
        yield s


@pytest.fixture
def control(config, ray_local):
    c = Projections(config)
    yield c
    for name in list(_started):
        for h in c.handles(name).values():
            ray.kill(h, no_restart=True)
    _started.clear()


_started: set[str] = set()


async def start(control: Projections, spec: ProjectionSpec) -> None:
    _started.add(spec.name)
    await control.start(spec)


def kits(journal, aggregate: AggregateType, ids) -> dict[str, AggregateTestKit]:
    return {
        i: AggregateTestKit(
            aggregate,
            entity_id=i,
            journal=journal,
            snapshot_store=InMemorySnapshotStore(),
            roundtrip=False,
        )
        for i in ids
    }


async def reserve_all(kit: AggregateTestKit, customers, first_seat: int = 0) -> None:
    for n, c in enumerate(customers, start=first_seat):
        r = await kit.arun(ReserveSeat(seat_label(n), c))
        assert r.ok, r.error


async def until(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- recording handler


@dataclass(frozen=True)
class Recorder:
    """A deliberately non-idempotent handler: records every delivery in ``deliveries``
    (ordered per worker activation). Fails for customer "poison" while ``fail_file`` exists,
    and for customer "flaky" on the first two attempts of each event."""

    fail_file: str = ""

    def __call__(self, session: CassandraSession, config: CassandraConfig) -> ProjectionHandler:
        return _Recording(session, config.keyspace, self.fail_file)


class _Recording(ProjectionHandler):
    def __init__(self, session, keyspace, fail_file) -> None:
        self.session, self.table, self.fail_file = session, f"{keyspace}.deliveries", fail_file
        self.attempts: Counter = Counter()

    async def global_prepare(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (tag text, worker text, boot bigint, "
            "n bigint, pid text, seq bigint, PRIMARY KEY ((tag), worker, boot, n))",
            prepare=False,
        )

    async def prepare(self) -> None:
        self.boot, self.n = time.time_ns(), 0

    async def handle(self, env) -> None:
        key = (env.persistence_id, env.sequence_nr)
        self.attempts[key] += 1
        customer = getattr(env.event, "customer", "")
        if customer == "poison" and self.fail_file and os.path.exists(self.fail_file):
            raise RuntimeError("poisoned reservation")
        if customer == "flaky" and self.attempts[key] <= 2:
            raise RuntimeError("flaky failure")
        self.n += 1
        await self.session.execute(
            f"INSERT INTO {self.table} (tag, worker, boot, n, pid, seq) VALUES (?,?,?,?,?,?)",
            (
                env.tag,
                f"{slice_of(env.persistence_id, 2)}",
                self.boot,
                self.n,
                env.persistence_id,
                env.sequence_nr,
            ),
        )


async def deliveries(session, keyspace: str, tag: str) -> list[tuple[str, int, int, str, int]]:
    """(worker slice-of-2, boot, n, pid, seq) in delivery order per worker activation."""
    rows = await session.select_all(
        f"SELECT worker, boot, n, pid, seq FROM {keyspace}.deliveries WHERE tag = ?",
        (tag,),
        profile=RAW_PROFILE,
    )
    return sorted(tuple(r) for r in rows)


def spec_for(
    tag: str,
    aggregate: AggregateType,
    *,
    n_slices: int = 1,
    fail_file: str = "",
    settings: ProjectionSettings = FAST,
) -> ProjectionSpec:
    return ProjectionSpec(f"rec-{tag}", tag, Recorder(fail_file), (aggregate,), n_slices, settings)


# --------------------------------------------------------------------------- streams


async def test_streams_current_live_by_id_dedupe_and_slices(journal, session, config):
    tag = f"st{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    ks = kits(journal, agg, ["a", "b", "c"])
    for k in ks.values():
        await reserve_all(k, ["u1", "u2", "u3"])
    await asyncio.sleep(DELAY + 0.1)
    streams = EventStreams(journal, spec_for(tag, agg).serialization(), poll_interval=0.1)

    current = [e async for e in streams.current_events_by_tag(tag)]
    assert len(current) == 9
    assert current[0].event == SeatReserved("A1", "u1") and current[0].tag == tag
    by_pid = defaultdict(list)
    for e in current:
        by_pid[e.persistence_id].append(e.sequence_nr)
    assert all(seqs == [1, 2, 3] for seqs in by_pid.values()) and len(by_pid) == 3
    offsets = [e.offset for e in current]
    assert offsets == sorted(offsets)
    rest = [e async for e in streams.current_events_by_tag(tag, offsets[3])]
    assert [e.offset for e in rest] == offsets[4:]
    assert offset_from_str(offset_to_str(offsets[3])) == offsets[3]

    pid = agg.persistence_id("b")
    by_id = [e async for e in streams.events_by_persistence_id(pid, 2)]
    assert [(e.sequence_nr, e.event.customer, e.offset) for e in by_id] == [
        (2, "u2", None),
        (3, "u3", None),
    ]

    halves = [
        [e.persistence_id async for e in streams.current_events_by_tag(tag, slices=([s], 2))]
        for s in (0, 1)
    ]
    assert sorted(halves[0] + halves[1]) == sorted(e.persistence_id for e in current)
    assert all(slice_of(p, 2) == s for s in (0, 1) for p in halves[s])

    # live: follows new events, and drops a re-written tag row of an event it delivered
    got = []

    async def follow():
        async for e in streams.events_by_tag(tag, offsets[-1]):
            got.append(e)

    task = asyncio.create_task(follow())
    try:
        await ks["a"].arun(ReserveSeat("C1", "late"))
        await until(lambda: _true(len(got) == 1), DELAY + 3, "the live event")
        first = got[0]
        assert (first.persistence_id, first.sequence_nr, first.event.customer) == (
            agg.persistence_id("a"),
            4,
            "late",
        )
        # a duplicate tag row with a later offset, as the journal writes when a tag write is slow
        ts = time.time_ns() // 1000
        await session.execute(
            f"INSERT INTO {config.keyspace}.tag_views (tag, bucket, timestamp_us, persistence_id,"
            " sequence_nr, event_timestamp_us, writer_id, ser_id, manifest, payload, tags) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                tag,
                ts // 3_600_000_000,
                ts,
                first.persistence_id,
                4,
                0,
                "dup",
                1,
                f"show{tag}.SeatReserved#1",
                b'{"seat":"C1","customer":"late"}',
                {tag},
            ),
        )
        await ks["c"].arun(ReserveSeat("C2", "after"))
        await until(lambda: _true(len(got) >= 2), DELAY + 3, "the event after the duplicate")
        await asyncio.sleep(DELAY + 0.3)
        raw = [te async for te in journal.events_by_tag(tag, first.offset)]
        assert [(t.event.persistence_id, t.event.sequence_nr) for t in raw].count(
            (first.persistence_id, 4)
        ) == 1, "the duplicate row is in the raw tag stream"
        assert [(e.persistence_id, e.sequence_nr) for e in got] == [
            (first.persistence_id, 4),
            (agg.persistence_id("c"), 4),
        ]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for k in ks.values():
        await k.aclose()


async def _true(v: bool) -> bool:
    return v


# --------------------------------------------------------------------------- the example view


async def test_view_exactly_once_under_load_with_restart_and_kill(
    journal, session, config, control
):
    spec = reservations_projection(settings=FAST, audit=True)
    await start(control, spec)
    shows = [f"s{i}-{uuid.uuid4().hex[:4]}" for i in range(16)]
    ks = kits(journal, SHOW, shows)
    customers = ["alice", "bob", "carol", "dave", "erin"]
    rng = random.Random(7)
    stop_at = time.monotonic() + 9.0

    async def writer(kit: AggregateTestKit) -> int:
        n = 0
        while time.monotonic() < stop_at:
            seat = f"A{rng.randint(1, 6)}"
            holder = kit.state.holder(seat)
            cmd = (
                CancelReservation(seat, holder)
                if holder
                else ReserveSeat(seat, rng.choice(customers))
            )
            assert (await kit.arun(cmd)).ok
            n += 1
            await asyncio.sleep(rng.uniform(0, 0.03))
        return n

    async def disrupt():
        await asyncio.sleep(2.5)
        await control.stop(spec.name)  # restart mid-stream
        await asyncio.sleep(0.5)
        await control.start(spec)
        await asyncio.sleep(2.5)
        (handle,) = control.handles(spec.name).values()
        ray.kill(handle, no_restart=False)  # crash: Ray re-creates it, it resumes by itself

    written, _ = await asyncio.gather(asyncio.gather(*(writer(k) for k in ks.values())), disrupt())
    written_at = time.time()
    total = sum(written)
    assert total > 300

    # every event of every show: from the journal itself
    expected_keys, expected_rows = set(), set()
    for show in shows:
        pid = SHOW.persistence_id(show)
        events = [
            e
            async for e in EventStreams(journal, spec.serialization()).events_by_persistence_id(pid)
        ]
        expected_keys |= {(pid, e.sequence_nr) for e in events}
        state = SHOW.apply(SHOW.initial_state, [e.event for e in events])
        expected_rows |= {(c, show, seat) for seat, c in state.reservations.items()}
    assert len(expected_keys) == total

    async def applied() -> Counter:
        rows = await session.select_all(
            f"SELECT persistence_id, sequence_nr FROM {config.keyspace}.{VIEW_TABLE}_applied",
            profile=RAW_PROFILE,
        )
        return Counter((r[0], r[1]) for r in rows)

    async def all_applied():
        return expected_keys <= set(await applied())

    await until(all_applied, 40, "every event applied to the view")
    await until_caught_up(control, spec.name, written_at, DELAY)  # no stray redelivery follows
    counts = await applied()
    assert set(counts) == expected_keys, "no event missed, nothing foreign"
    assert max(counts.values()) == 1, "no event applied twice"
    rows = await session.select_all(
        f"SELECT customer, show, seat FROM {config.keyspace}.{VIEW_TABLE}", profile=RAW_PROFILE
    )
    assert {tuple(r) for r in rows} == expected_rows, "the view equals a fold of the journal"
    for c in customers:
        assert await reservations_of(session, config.keyspace, c) == sorted(
            (s, seat) for cc, s, seat in expected_rows if cc == c
        )
    (status,) = await control.status(spec.name)
    assert status["state"] == "running" and status["lag_events"] == 0
    assert status["error"] == ""
    for k in ks.values():
        await k.aclose()


# --------------------------------------------------------------------------- offsets


async def test_resume_exactly_after_stored_offset_and_reset_replays(
    journal, session, config, control
):
    tag = f"of{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    spec = spec_for(tag, agg)
    ks = kits(journal, agg, ["x", "y", "z"])
    for k in ks.values():
        await reserve_all(k, [f"c{i}" for i in range(10)])
    await start(control, spec)

    async def delivered(n):
        d = await deliveries(session, config.keyspace, tag)
        return d if len(d) >= n else None

    first = await until(lambda: delivered(30), 20, "30 deliveries")
    await asyncio.sleep(0.5)
    await control.stop(spec.name)
    stored = await CassandraOffsetStore(session, config.keyspace).load(spec.name, worker_key(0, 1))
    visible = [te async for te in journal.events_by_tag(tag)]
    assert stored is not None and stored.offset == visible[-1].offset
    assert stored.desired == "stopped"
    assert len(await deliveries(session, config.keyspace, tag)) == len(first) == 30

    for k in ks.values():
        await reserve_all(k, [f"d{i}" for i in range(10, 15)], first_seat=10)  # 15 more events
    await start(control, spec)
    after = await until(lambda: delivered(45), 20, "45 deliveries")
    second_boot = [(p, s) for (_, b, _, p, s) in after if b == max(r[1] for r in after)]
    assert len(second_boot) == 15
    assert set(second_boot) == {(agg.persistence_id(i), s) for i in "xyz" for s in range(11, 16)}

    await control.reset(spec, None)
    replay = await until(lambda: delivered(90), 20, "the replay after reset")
    third = [(p, s) for (_, b, _, p, s) in replay if b == max(r[1] for r in replay)]
    assert sorted(third) == sorted(
        {(agg.persistence_id(i), s) for i in "xyz" for s in range(1, 16)}
    )
    (status,) = await control.status(spec.name)
    assert status["state"] == "running"
    for k in ks.values():
        await k.aclose()


# --------------------------------------------------------------------------- failures


async def test_poison_event_parks_only_its_aggregate_then_retry_resumes_it_in_order(
    journal, session, config, control, tmp_path, capsys
):
    tag = f"fa{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    fail_file = tmp_path / "poison-on"
    fail_file.write_text("1")
    spec = spec_for(tag, agg, fail_file=str(fail_file))
    ks = kits(journal, agg, ["p", "q"])
    await reserve_all(ks["p"], ["alice", "flaky", "bob", "poison", "carol"])
    await reserve_all(ks["q"], ["q1", "q2"])
    pid, qid = agg.persistence_id("p"), agg.persistence_id("q")
    await start(control, spec)

    async def parked():
        (st,) = await control.status(spec.name)
        return st if st["parked"] else None

    status = await until(parked, 20, "the poison aggregate to park")
    assert status["state"] == "running", "the worker keeps running"
    (rec,) = status["parked"]
    assert rec["persistence_id"] == pid and rec["sequence_nr"] == 4
    assert "poisoned reservation" in rec["error"]
    assert status["retries"] >= 2 + 2, "flaky retried twice, poison retried twice"
    await reserve_all(ks["q"], ["q3"], first_seat=2)  # other aggregates keep flowing
    await reserve_all(ks["p"], ["dan"], first_seat=5)  # the parked one waits

    async def q_done():
        d = [(p, s) for (_, _, _, p, s) in await deliveries(session, config.keyspace, tag)]
        return d if (qid, 3) in d else None

    got = await until(q_done, 20, "q's event after the park")
    assert [x for x in got if x[0] == pid] == [(pid, 1), (pid, 2), (pid, 3)], (
        "p stops before its poison event (the flaky one delivered after retries)"
    )
    assert [x for x in got if x[0] == qid] == [(qid, 1), (qid, 2), (qid, 3)]
    assert [
        p.persistence_id
        for p in await CassandraOffsetStore(session, config.keyspace).parked(spec.name)
    ] == [pid]
    assert await control.parked(spec.name) == [rec]

    from raysource.cli.main import main

    args = [
        "--cassandra",
        f"{config.contact_points[0]}:{config.port}",
        "--keyspace",
        config.keyspace,
    ]

    def cli(*argv: str) -> int:  # the CLI runs its own event loop
        return main([*argv, *args])

    assert await asyncio.to_thread(cli, "projection", "status", spec.name) == 0
    assert await asyncio.to_thread(cli, "projection", "parked", spec.name) == 0
    out = capsys.readouterr().out
    assert "parked 1 aggregate(s)" in out and f"parked {pid} at #4: RuntimeError" in out
    assert f"{spec.name} 0/1: {pid} parked at #4" in out and "1 parked aggregate stream" in out
    fail_file.unlink()  # the handler is "fixed"
    assert await asyncio.to_thread(cli, "projection", "retry", spec.name, "--pid", pid) == 0
    assert f"{spec.name}: retry {pid}: 3 event(s) applied" in capsys.readouterr().out
    got = [(p, s) for (_, _, _, p, s) in await deliveries(session, config.keyspace, tag)]
    assert [x for x in got if x[0] == pid] == [(pid, s) for s in range(1, 7)], (
        "resumed from the poison event, in order, nothing twice"
    )
    (status,) = await control.status(spec.name)
    assert status["parked"] == [] and await control.parked(spec.name) == []
    # every write is done: once the worker is at the journal's end, the tag stream has had
    # its chance to re-deliver what was already applied
    await until_caught_up(control, spec.name, time.time(), DELAY)
    again = [(p, s) for (_, _, _, p, s) in await deliveries(session, config.keyspace, tag)]
    assert sorted(again) == sorted(set(again)) and len(again) == 6 + 3
    with pytest.raises(ProjectionError, match="is not parked"):
        await control.retry(spec.name, pid)
    for k in ks.values():
        await k.aclose()


# --------------------------------------------------------------------------- slices


async def test_two_slice_workers_split_the_tag_keeping_per_aggregate_order(
    journal, session, config, control
):
    tag = f"sl{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    spec = spec_for(tag, agg, n_slices=2)
    ids = [f"e{i}" for i in range(10)]
    await start(control, spec)
    assert set(control.handles(spec.name)) == {"0/2", "1/2"}
    ks = kits(journal, agg, ids)
    await asyncio.gather(*(reserve_all(k, [f"c{i}" for i in range(6)]) for k in ks.values()))

    async def delivered():
        d = await deliveries(session, config.keyspace, tag)
        return d if len(d) >= 60 else None

    rows = await until(delivered, 60, "60 deliveries")  # generous: CI machines are loaded
    per_pid = defaultdict(list)
    workers = defaultdict(set)
    for w, _b, _n, p, s in rows:  # sorted by worker, activation, delivery number
        per_pid[p].append(s)
        workers[p].add(w)
    assert set(per_pid) == {agg.persistence_id(i) for i in ids}
    assert all(seqs == [1, 2, 3, 4, 5, 6] for seqs in per_pid.values()), per_pid
    assert all(ws == {str(slice_of(p, 2))} for p, ws in workers.items())
    assert {w for ws in workers.values() for w in ws} == {"0", "1"}, "both workers had work"
    statuses = await control.status(spec.name)
    assert [s["worker"] for s in statuses] == ["0/2", "1/2"]
    assert sum(s["handled"] for s in statuses) == 60
    # one read of the tag: slice 0 reads and feeds slice 1, which never queries the tag, so the
    # tag is read about once in total, by the reader only (a tag row re-written by the
    # writer's at-least-once tag write, or a re-read page, may add a few)
    assert [s["role"] for s in statuses] == ["reader", "follower"], statuses
    assert 60 <= statuses[0]["tag_rows_read"] <= 66 and statuses[1]["tag_rows_read"] == 0, statuses
    for k in ks.values():
        await k.aclose()


def test_offset_strings_round_trip():
    for off in (TagOffset(1, "show|a:b", 3), TagOffset(17, "x", 1)):
        assert offset_from_str(offset_to_str(off)) == off
    assert offset_from_str("start") is None and offset_to_str(None) == "start"


# --------------------------------------------------------------------------- CLI


def test_cli_projection_and_view(config, control, capsys):
    from raysource.cli.main import main

    show = f"cli-{uuid.uuid4().hex[:6]}"

    async def write() -> None:
        j = await CassandraJournal.connect(config, create_schema=True)
        kit = kits(j, SHOW, [show])[show]
        await reserve_all(kit, ["zoe", "zoe", "yan"])
        await kit.aclose()
        await j.close()

    asyncio.run(write())
    args = [
        "--cassandra",
        f"{config.contact_points[0]}:{config.port}",
        "--keyspace",
        config.keyspace,
    ]
    _started.add("reservations-by-customer")
    assert main(["projection", "start", *args]) == 0
    out = capsys.readouterr().out
    assert "reservations-by-customer 0/1: running" in out
    deadline = time.monotonic() + 20
    while True:
        assert main(["view", "reservations", "zoe", *args]) == 0
        out = capsys.readouterr().out
        if out.split("\n").count(f"{show}\tA2") == 1:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    assert f"{show}\tA1" in out and f"{show}\tA3" not in out
    # zoe's rows can be in the view before yan's event was read: caught up is the worker's
    # lag, not a view row
    while True:
        assert main(["projection", "status", "reservations-by-customer", *args]) == 0
        out = capsys.readouterr().out
        if "lag 0 events" in out:
            break
        assert time.monotonic() < deadline + 20, out
        time.sleep(0.3)
    assert main(["projection", "pause", "reservations-by-customer", *args]) == 0
    assert "0/1: paused" in capsys.readouterr().out
    assert main(["projection", "status", "reservations-by-customer", *args]) == 0
    assert "lag 0 events" in capsys.readouterr().out
    assert main(["projection", "stop", "reservations-by-customer", *args]) == 0
    assert main(["projection", "status", "reservations-by-customer", *args]) == 0
    out = capsys.readouterr().out
    assert "not running (last: stopped)" in out and "offset start" not in out
    # reset without running workers: done from the CLI process, the view is rebuilt later
    assert main(["projection", "reset", "--to", "start", *args]) == 0
    assert "0/1: not running (last: stopped)  offset start" in capsys.readouterr().out
    assert main(["view", "reservations", "zoe", *args]) == 0
    assert capsys.readouterr().out == "", "on_reset truncated the view"
    assert main(["projection", "pause", "reservations-by-customer", *args]) == 2
    # skip the whole backlog: the offset moves to the newest visible event of the tag
    assert main(["projection", "set-offset", "--to", "end", *args]) == 0
    out = capsys.readouterr().out
    end = out.strip().rsplit(" ", 1)[1]
    assert out.startswith("reservations-by-customer: offset set to ") and end != "start"
    assert offset_from_str(end).timestamp_us > 0
    assert main(["projection", "status", "reservations-by-customer", *args]) == 0
    assert f"offset {end}" in capsys.readouterr().out
    assert main(["projection", "skip", "reservations-by-customer", *args]) == 2
    assert "needs --pid" in capsys.readouterr().err


# --------------------------------------------------------------------------- worker without Ray


class _Collect(ProjectionHandler):
    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def handle(self, env) -> None:  # a plain (sync) handler
        self.got.append((env.persistence_id, env.sequence_nr))


class _FlakyTagReads:
    """Delegates to a journal; its first ``failures`` tag queries fail like an outage."""

    def __init__(self, journal, failures: int) -> None:
        self.journal, self.failures = journal, failures

    async def events_by_tag(self, tag, after=None, *, limit=None):
        if self.failures > 0:
            self.failures -= 1
            from raysource.journal.errors import JournalUnavailableError

            raise JournalUnavailableError("injected: Cassandra unavailable")
        async for te in self.journal.events_by_tag(tag, after, limit=limit):
            yield te


async def test_worker_rides_out_a_journal_outage_with_a_sync_handler(journal, session, config):
    from raysource.readside.worker import ProjectionWorker

    tag = f"ou{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    handler = _Collect()
    spec = ProjectionSpec(
        f"out-{tag}",
        tag,
        lambda s, c: handler,
        (agg,),
        1,
        dataclasses.replace(FAST, retry_backoff=0.2, retry_backoff_max=0.4),
    )
    ks = kits(journal, agg, ["o"])
    await reserve_all(ks["o"], ["a", "b", "c"])
    flaky = _FlakyTagReads(journal, failures=4)
    worker = ProjectionWorker(spec, 0, session, config, flaky)
    await worker.global_prepare()
    await worker.boot()
    await worker.start()
    try:

        async def failing():
            st = await worker.status()
            return st if st["error"] else None

        st = await until(failing, 5, "the outage to show")
        assert st["state"] == "running" and "Cassandra unavailable" in st["error"]
        pid = agg.persistence_id("o")
        await until(lambda: _true(len(handler.got) == 3), 10, "the events after the outage")
        assert handler.got == [(pid, 1), (pid, 2), (pid, 3)]
        await until(lambda: _true(worker.error == ""), 5, "the error to clear")
        assert flaky.failures == 0
    finally:
        await worker.stop()
    stored = await CassandraOffsetStore(session, config.keyspace).load(spec.name, "0/1")
    assert stored.state == "stopped" and stored.offset is not None
    await ks["o"].aclose()


async def test_worker_status_records_the_lag_gauges(journal, session, config):
    from raysource.readside.worker import ProjectionWorker
    from raysource.runtime.metrics import Metrics

    tag = f"lg{uuid.uuid4().hex[:6]}"
    agg = show_type(tag)
    handler = _Collect()
    spec = ProjectionSpec(f"lag-{tag}", tag, lambda s, c: handler, (agg,), 1, FAST)
    ks = kits(journal, agg, ["l"])
    await reserve_all(ks["l"], ["a", "b", "c"])
    metrics = Metrics()
    worker = ProjectionWorker(spec, 0, session, config, journal, metrics=metrics)
    await worker.global_prepare()
    await worker.boot()
    labels = dict(projection=spec.name, slice="0/1")

    async def lag_of(n: int):
        st = await worker.status()
        return st if st["lag_events"] == n else None

    st = await until(lambda: lag_of(3), 10, "three visible events")
    assert metrics.value("raysource_projection_lag_events", **labels) == 3
    assert metrics.value("raysource_projection_lag_seconds", **labels) == st["lag_seconds"] > 0
    await worker.start()
    try:
        await until(lambda: lag_of(0), 10, "the worker to catch up")
        assert metrics.value("raysource_projection_lag_events", **labels) == 0
        assert metrics.value("raysource_projection_lag_seconds", **labels) == 0
    finally:
        await worker.stop()
    await ks["l"].aclose()
