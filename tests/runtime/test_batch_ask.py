"""Batched asks (``EntityRef.ask_many``, ``HostActor.ask_many``) on real Ray and Cassandra.

Every test kills the actors it created. The ref's re-send rules are also checked against a
scripted stand-in host (the split a real passivation makes inside one batch is a race).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sys
import threading
import time
import uuid
from typing import Any

import cloudpickle
import pytest
import ray.cloudpickle as ray_cloudpickle

from raysource.examples.seats import (
    SHOW,
    CancelReservation,
    CreateShow,
    GetShow,
    ReservationCancelled,
    ReserveSeat,
    SeatReserved,
    seat_label,
)
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import AggregateType, IdempotencyPolicy
from raysource.runtime.errors import (
    CommandRejected,
    HandlerError,
    HostCrashedError,
    PassivatedError,
    UnknownCommandError,
)
from raysource.runtime.host import AggregateHost
from raysource.runtime.stores import StoreSpec
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.local_resolver import LocalResolver

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in host below
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

PLACEMENTS = ["dedicated", "hosted"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def create() -> None:
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        await journal.close()

    asyncio.run(create())
    return cfg


@pytest.fixture
def make_resolver(ray_local, config):
    made: list[LocalResolver] = []

    def make(placement: str, **settings: Any) -> LocalResolver:
        r = LocalResolver(
            f"b{uuid.uuid4().hex[:8]}",
            StoreSpec("cassandra", config),
            placement={SHOW.name: placement},
            host_settings={SHOW.name: dict(settings)},
        )
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill_all()


def eid() -> str:
    return f"show-{uuid.uuid4().hex[:8]}"


def journal_events(config: CassandraConfig, agg: AggregateType, entity_id: str) -> list:
    """(sequence_nr, event) of the stored history, read from Cassandra."""
    ser = Serialization()
    agg.register_types(ser)

    async def read() -> list:
        journal = await CassandraJournal.connect(config)
        try:
            pid = agg.persistence_id(entity_id)
            return [
                (e.sequence_nr, ser.decode(e.serializer_id, e.manifest, e.payload))
                async for e in journal.replay(pid)
            ]
        finally:
            await journal.close()

    return asyncio.run(read())


def sequential(commands: list) -> list:
    """The outcomes of ``commands`` asked one at a time on a fresh in-memory host."""
    ser = Serialization()
    SHOW.register_types(ser)

    async def go() -> list:
        host = AggregateHost(SHOW, InMemoryJournal(), InMemorySnapshotStore(), ser)
        out = []
        for c in commands:
            try:
                out.append(await host.ask("s", c))
            except Exception as exc:
                out.append(exc)
        await host.close()
        return out

    return asyncio.run(go())


def same(a: list, b: list) -> bool:
    """Equal outcomes: equal replies, errors of the same type and message."""

    def key(o: Any) -> Any:
        return (type(o), str(o)) if isinstance(o, BaseException) else o

    return [key(o) for o in a] == [key(o) for o in b]


def order_dependent(n: int, seed: int) -> list:
    """Reservations and cancellations over few seats: outcomes depend on the order."""
    rng = random.Random(seed)
    cmds: list = []
    for _i in range(n):
        seat = seat_label(rng.randrange(40))
        who = f"c{rng.randrange(3)}"
        cmds.append(ReserveSeat(seat, who) if rng.random() < 0.6 else CancelReservation(seat, who))
    return cmds


def accepted(outcomes: list) -> list:
    return [o for o in outcomes if isinstance(o, (SeatReserved, ReservationCancelled))]


# --------------------------------------------------------------------------- order, group commit


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_batch_of_500_runs_in_order_with_group_commit(make_resolver, config, placement):
    import ray

    ref = EntityRef(SHOW, eid(), make_resolver(placement))
    cmds = order_dependent(500, seed=7)
    expected = sequential(cmds)
    assert 0 < len(accepted(expected)) < 500  # some rejections, some of each kind

    t = time.perf_counter()
    outcomes = ref.ask_many(cmds, timeout=60)
    took = time.perf_counter() - t
    assert same(outcomes, expected)
    assert any(isinstance(o, CommandRejected) for o in outcomes)

    # pipelined batches from one ref keep their send order too
    more = order_dependent(300, seed=8)

    async def pipelined() -> list:
        parts = [more[:100], more[100:200], more[200:]]
        tasks = [asyncio.ensure_future(ref.ask_many_async(p, timeout=60)) for p in parts]
        return [o for part in await asyncio.gather(*tasks) for o in part]

    outcomes2 = asyncio.run(pipelined())
    assert same(outcomes2, sequential(cmds + more)[500:])

    events = journal_events(config, SHOW, ref.entity_id)
    assert [s for s, _ in events] == list(range(1, len(events) + 1))
    assert [e for _, e in events] == accepted(outcomes) + accepted(outcomes2)
    stats = ray.get(ref.actor.info.remote(), timeout=30)["stats"]
    assert stats["commands"] == 800
    assert stats["writes"] * 20 <= stats["commands"], stats  # group commit: << 1 write/command
    print(f"{placement}: 500 commands in {took * 1000:.0f} ms, {stats['writes']} writes")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_per_command_errors_leave_neighbours_alone(make_resolver, config, placement):
    ref = EntityRef(SHOW, eid(), make_resolver(placement))
    cmds = [
        ReserveSeat("A1", "alice"),
        ReserveSeat("A1", "bob"),
        ReserveSeat("A2", "bob"),
        ReserveSeat(None, "x"),
        "not a command",
        ReserveSeat("A3", "carol"),
        CancelReservation("A2", "alice"),
        CancelReservation("A2", "bob"),
        GetShow(),
    ]
    out = ref.ask_many(cmds, timeout=60)
    assert out[0] == SeatReserved("A1", "alice")
    assert isinstance(out[1], CommandRejected) and "already reserved" in out[1].reason
    assert out[2] == SeatReserved("A2", "bob")
    assert isinstance(out[3], HandlerError)
    assert isinstance(out[4], UnknownCommandError)
    assert out[5] == SeatReserved("A3", "carol")
    assert isinstance(out[6], CommandRejected)
    assert out[7] == ReservationCancelled("A2", "bob")
    assert out[8].reservations == {"A1": "alice", "A3": "carol"}  # read sees the batch so far
    events = journal_events(config, SHOW, ref.entity_id)
    assert [e for _, e in events] == [out[0], out[2], out[5], out[7]]
    assert ref.ask_many([]) == []
    assert ref.ask(GetShow()) == out[8]  # single asks continue the numbering


# --------------------------------------------------------------------------- passivation


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_batches_straddling_passivation_lose_and_duplicate_nothing(
    make_resolver, config, placement
):
    import ray

    resolver = make_resolver(placement, idle_timeout_s=0.6)
    ref = EntityRef(SHOW, eid(), resolver)
    assert ref.ask(CreateShow(1000)) is not None
    batches = [
        [ReserveSeat(seat_label(b * 100 + i), f"c{b}") for i in range(100)] for b in range(6)
    ]

    def ok(outcomes: list, batch: list) -> None:
        assert outcomes == [SeatReserved(c.seat, c.customer) for c in batch]

    ok(ref.ask_many(batches[0], timeout=60), batches[0])
    # explicit passivation between two batches (dedicated: the actor retires and refuses)
    assert ray.get(ref.actor.passivate.remote(ref.entity_id), timeout=30) is True
    ok(ref.ask_many(batches[1], timeout=60), batches[1])
    # idle passivation between two batches
    name = resolver.spec_for(SHOW, ref.entity_id).actor_name
    deadline = time.monotonic() + 10
    while True:
        try:
            gone = (
                ray.get(ref.actor.info.remote(), timeout=5)["active"] == 0
                if placement == "hosted"
                else False
            )
        except Exception:
            gone = True
        if placement == "dedicated":
            try:
                ray.get_actor(name)
            except ValueError:
                gone = True
        if gone:
            break
        assert time.monotonic() < deadline, "no idle passivation"
        time.sleep(0.1)
    ok(ref.ask_many(batches[2], timeout=60), batches[2])

    # a passivation racing with pipelined batches
    async def racing() -> list:
        t1 = asyncio.ensure_future(ref.ask_many_async(batches[3], timeout=60))
        t2 = asyncio.ensure_future(ref.ask_many_async(batches[4], timeout=60))
        await asyncio.sleep(0.005)
        passivated = ref.actor.passivate.remote(ref.entity_id)
        t3 = asyncio.ensure_future(ref.ask_many_async(batches[5], timeout=60))
        out = await asyncio.gather(t1, t2, t3)
        await passivated
        return out

    for outcomes, batch in zip(asyncio.run(racing()), batches[3:]):
        ok(outcomes, batch)

    events = [e for _, e in journal_events(config, SHOW, ref.entity_id)][1:]  # after CreateShow
    assert len(events) == 600 and len(set(events)) == 600  # nothing lost, nothing twice
    flat = [SeatReserved(c.seat, c.customer) for b in batches for c in b]
    assert events[:300] == flat[:300]  # sequential batches: exact order
    for batch in batches[3:]:  # racing ones: each batch in its own order
        mine = [SeatReserved(c.seat, c.customer) for c in batch]
        assert [e for e in events if e in set(mine)] == mine


# --------------------------------------------------------------------------- re-send rules


# The stand-ins speak the raw protocol (plain commands): idempotency keys off. With keys on a
# crash is re-sent under the same keys until the deadline (tests/runtime/test_idempotent_refs.py).
SHOW_RAW = dataclasses.replace(SHOW, idempotency=IdempotencyPolicy(enabled=False))


class StandIn:
    """A scripted host: answers ``ask_many`` with ``script[call]`` (or crashes) and records
    every call."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: list = []

    async def ask_many(self, entity_id, caller_id, first_seq, commands):
        self.calls.append((caller_id, first_seq, list(commands)))
        if self.mode == "crash":
            os._exit(1)
        if self.mode == "split" and len(self.calls) == 1:
            # the first two applied, the rest refused by a stopping activation
            return [f"A:{c}" for c in commands[:2]] + [
                PassivatedError("retiring") for _ in commands[2:]
            ]
        return [f"B:{c}" for c in commands]

    async def get_calls(self) -> list:
        return self.calls


class ScriptedResolver:
    def __init__(self, handles: list) -> None:
        self.handles = list(handles)
        self.lock = threading.Lock()

    def resolve(self, aggregate_type, entity_id):
        with self.lock:
            return self.handles[0]

    def invalidate(self, aggregate_type, entity_id, handle=None):
        with self.lock:
            if len(self.handles) > 1 and (handle is None or handle is self.handles[0]):
                self.handles.pop(0)


def test_not_applied_suffix_is_resent_in_order_under_a_fresh_caller(ray_local):
    import ray

    actor = ray.remote(StandIn)
    a, b = actor.remote("split"), actor.remote("fresh")
    try:
        ref = EntityRef(SHOW_RAW, eid(), ScriptedResolver([a, b]))
        out = ref.ask_many(["c0", "c1", "c2", "c3"], timeout=30)
        assert out == ["A:c0", "A:c1", "B:c2", "B:c3"]
        ((caller_a, seq_a, cmds_a),) = ray.get(a.get_calls.remote())
        ((caller_b, seq_b, cmds_b),) = ray.get(b.get_calls.remote())
        assert (seq_a, cmds_a) == (0, ["c0", "c1", "c2", "c3"])
        assert caller_b != caller_a and (seq_b, cmds_b) == (0, ["c2", "c3"])
        # the ref never calls the refusing activation again; numbering advanced by the batch
        assert ref.ask_many(["c4"]) == ["B:c4"]
        assert ray.get(b.get_calls.remote())[-1] == (caller_b, 2, ["c4"])
    finally:
        ray.kill(a)
        ray.kill(b)


def test_host_crash_mid_batch_reports_every_unknown_command(ray_local):
    import ray

    actor = ray.remote(StandIn).options(max_restarts=0)
    a = actor.remote("crash")
    ref = EntityRef(SHOW_RAW, eid(), ScriptedResolver([a]))
    out = ref.ask_many(["c0", "c1", "c2"], timeout=30)
    assert len(out) == 3 and all(isinstance(o, HostCrashedError) for o in out)
