"""Coordinator state machine and host, without Ray (in-memory journal, scripted membership)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_guard import no_ray  # noqa: F401  (autouse: these tests must not start Ray)

from raysource.journal.errors import ConfigError, JournalUnavailableError
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.shard_id import shard_of
from raysource.sharding.allocation import ShardId
from raysource.sharding.coordinator import CoordinatorSettings, ShardCoordinator
from raysource.sharding.coordinator_state import (
    COORDINATOR_SERIALIZATION,
    CoordinatorState,
    NodeRemoved,
    ShardAllocated,
    ShardCountRegistered,
    ShardMoved,
)
from raysource.sharding.errors import (
    CoordinatorFencedError,
    NoLiveNodesError,
    ShardCountChangedError,
    ShardingError,
)

NODES = ["n1", "n2", "n3", "n4"]

# ------------------------------------------------------------------ pure state machine

ops = st.lists(
    st.one_of(
        st.tuples(st.just("home"), st.sampled_from("ab"), st.integers(0, 11)),
        st.tuples(st.just("live"), st.lists(st.sampled_from(NODES), unique=True, max_size=4)),
        st.tuples(st.just("rebalance"), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(ops)
@settings(max_examples=150, deadline=None)
def test_replay_equals_live_state_and_invariants(script) -> None:
    state = CoordinatorState()
    log: list = []

    def run(events):
        for ev in events:
            state.apply(ev)
            log.append(ev)

    run(state.decide_register("a", 12) + state.decide_register("b", 5))
    live = ["n1"]
    for op in script:
        if op[0] == "home":
            shard = ShardId(op[1], op[2] % state.shard_counts[op[1]])
            if not state.usable(live):
                with pytest.raises(NoLiveNodesError):
                    state.decide_home(shard, live)
                continue
            run(state.decide_home(shard, live))
            assert state.owner[shard] in state.usable(live)
        elif op[0] == "live":
            live = op[1]
            run(state.decide_dead(live))
            if state.usable(live):
                assert set(state.allocation()) <= state.usable(live)
        else:
            run(
                ShardMoved(m.shard.type_name, m.shard.shard, m.from_node, m.to_node)
                for m in state.plan_rebalance(live, op[1])
            )
    assert CoordinatorState.replayed(log) == state
    # every event survives the real serializer
    for ev in log:
        assert COORDINATOR_SERIALIZATION.decode(*COORDINATOR_SERIALIZATION.encode(ev)) == ev
    assert all(n not in state.removed_nodes for n in state.allocation())


def test_register_rules() -> None:
    state = CoordinatorState()
    assert state.decide_register("a", 8) == [ShardCountRegistered("a", 8)]
    state.apply(ShardCountRegistered("a", 8))
    assert state.decide_register("a", 8) == []
    with pytest.raises(ShardCountChangedError) as info:
        state.decide_register("a", 16)
    assert (info.value.stored, info.value.requested) == (8, 16)
    assert isinstance(info.value, ConfigError)
    for bad in [("", 1), ("x|y", 1), ("b", 0), ("b", True)]:
        with pytest.raises(ConfigError):
            state.decide_register(*bad)
    with pytest.raises(ConfigError):
        state.decide_home(ShardId("a", 8), ["n1"])
    with pytest.raises(ConfigError):
        state.decide_home(ShardId("zzz", 0), ["n1"])


def test_dead_node_events() -> None:
    state = CoordinatorState.replayed(
        [
            ShardCountRegistered("a", 4),
            ShardAllocated("a", 0, "n1"),
            ShardAllocated("a", 1, "n2"),
            ShardAllocated("a", 2, "n1"),
            ShardAllocated("a", 3, "n2"),
        ]
    )
    events = state.decide_dead(["n1", "n3"])
    assert events == [
        ShardMoved("a", 1, "n2", "n3"),
        ShardMoved("a", 3, "n2", "n3"),
        NodeRemoved("n2"),
    ]
    assert state.decide_dead([]) == []  # nowhere to go: keep the table


# ------------------------------------------------------------------ host (no Ray)


class Membership:
    def __init__(self, *nodes: str) -> None:
        self.nodes = list(nodes)

    def __call__(self) -> list[str]:
        return list(self.nodes)


class Region:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[ShardId] = []
        self.fail = fail

    async def handoff(self, shard: ShardId) -> None:
        self.calls.append(shard)
        if self.fail:
            raise RuntimeError("region down")


def make(journal, members, **kw) -> ShardCoordinator:
    cfg = CoordinatorSettings(**{"max_moves": 2, **kw})
    return ShardCoordinator("sys", lambda: journal, members, cfg, poll=False)


async def test_home_allocates_least_loaded_and_restart_resumes() -> None:
    journal, members = InMemoryJournal(), Membership("n1", "n2")
    c = make(journal, members)
    await c.register_type("a", 10)
    homes = {s: await c.home("a", s) for s in range(10)}
    assert Counter(homes.values()) == {"n1": 5, "n2": 5}
    assert await c.home("a", 3) == homes[3]  # cached, no new event
    shard, node = await c.home_of("a", "alice")
    assert shard == shard_of("alice", 10) and node == homes[shard]
    stored = await c.ready()
    assert stored == 11 == await journal.highest_sequence_nr("__coordinator__|sys")

    again = make(journal, members)
    assert await again.ready() == stored
    assert await again.allocation() == await c.allocation()
    assert await again.shard_counts() == {"a": 10}
    with pytest.raises(ShardCountChangedError):
        await again.register_type("a", 11)
    await again.register_type("a", 10)  # idempotent, nothing written
    assert await journal.highest_sequence_nr("__coordinator__|sys") == stored


async def test_dead_node_shards_move_and_home_rehomes_at_once() -> None:
    journal, members = InMemoryJournal(), Membership("n1", "n2", "n3")
    c = make(journal, members)
    await c.register_type("a", 9)
    for s in range(9):
        await c.home("a", s)
    members.nodes = ["n1", "n3"]
    # a caller notices before the loop does: its shard is re-homed on the spot
    on_n2 = (await c.allocation())["n2"]
    assert await c.home("a", on_n2[0].shard) == "n2"  # membership as of the last poll
    assert await c.home("a", on_n2[0].shard, refresh=True) in ("n1", "n3")
    events = await c.tick()
    assert NodeRemoved("n2") in events
    alloc = await c.allocation()
    assert set(alloc) == {"n1", "n3"}
    assert sorted(len(v) for v in alloc.values()) == [4, 5]
    members.nodes = ["n1", "n2", "n3"]  # a removed node id is never used again
    await c.tick()
    assert "n2" not in await c.allocation()
    assert await c.nodes() == ["n1", "n3"]
    members.nodes = []
    with pytest.raises(NoLiveNodesError):
        await c.home("a", 0, refresh=True)


async def test_join_rebalances_bounded_with_handoff() -> None:
    journal, members = InMemoryJournal(), Membership("n1")
    c = make(journal, members)
    await c.register_type("a", 8)
    for s in range(8):
        await c.home("a", s)
    region = Region()
    await c.register_region("n1", region)
    members.nodes = ["n1", "n2"]
    rounds = []
    while moved := [e for e in await c.tick() if isinstance(e, ShardMoved)]:
        assert len(moved) <= 2
        rounds.append(moved)
    assert len(rounds) == 2  # 4 shards to move, 2 per round
    assert [ShardId("a", e.shard) for r in rounds for e in r] == region.calls
    assert [len(v) for v in (await c.allocation()).values()] == [4, 4]


async def test_failed_handoff_keeps_the_shard() -> None:
    members = Membership("n1")
    c = make(InMemoryJournal(), members, rebalance=False)
    await c.register_type("a", 4)
    for s in range(4):
        await c.home("a", s)
    await c.register_region("n1", Region(fail=True))
    members.nodes = ["n1", "n2"]
    assert await c.tick() == []  # rebalancing off
    assert await c.begin_rebalance() == []  # handoff failed: nothing moved
    await c.register_region("n1", Region())
    assert len(await c.begin_rebalance()) == 2


async def test_second_instance_fences_the_first() -> None:
    journal, members = InMemoryJournal(), Membership("n1")
    first = make(journal, members)
    await first.register_type("a", 4)
    second = make(journal, members)
    await second.register_type("b", 2)  # second recovered seq 1 and wrote seq 2
    with pytest.raises(CoordinatorFencedError):
        await first.register_type("c", 2)  # first still believes seq 1 is the last
    with pytest.raises(CoordinatorFencedError):
        await first.home("a", 0)
    assert await second.home("a", 0) == "n1"


async def test_unknown_write_outcome_is_reread() -> None:
    journal, members = InMemoryJournal(), Membership("n1")
    c = make(journal, members)
    await c.register_type("a", 4)
    journal.fail_next_appends(1, JournalUnavailableError, after_write=True)
    with pytest.raises(JournalUnavailableError):
        await c.home("a", 1)
    assert await c.home("a", 1) == "n1"  # caught up: no duplicate allocation, no fencing
    assert await journal.highest_sequence_nr("__coordinator__|sys") == 2


async def test_poll_loop_reallocates_without_callers() -> None:
    journal, members = InMemoryJournal(), Membership("n1", "n2")
    c = ShardCoordinator("sys", lambda: journal, members, CoordinatorSettings(poll_interval=0.02))
    try:
        await c.register_type("a", 4)
        for s in range(4):
            await c.home("a", s)
        members.nodes = ["n2"]
        for _ in range(100):
            if list(await c.allocation()) == ["n2"]:
                break
            await asyncio.sleep(0.02)
        assert list(await c.allocation()) == ["n2"]
    finally:
        await c.shutdown()


def test_settings_validation() -> None:
    with pytest.raises(ConfigError):
        CoordinatorSettings(poll_interval=0)
    with pytest.raises(ConfigError):
        CoordinatorSettings(rebalance_threshold=1)
    with pytest.raises(ConfigError):
        ShardCoordinator("a|b", InMemoryJournal, Membership())


class _LateJournal(InMemoryJournal):
    """The next append times out for the caller and lands only after the caller re-read."""

    late: list | None = None

    async def append(self, events):  # noqa: ANN001
        if self.late is None:
            self.late = []
            self.late.append(list(events))
            raise JournalUnavailableError("timed out; may still land")
        if self.late:
            await InMemoryJournal.append(self, self.late.pop())  # lands late
        await InMemoryJournal.append(self, events)


async def test_own_late_write_does_not_fence_the_coordinator() -> None:
    members = Membership("n1")
    c2 = make(_LateJournal(), members)
    with pytest.raises(JournalUnavailableError):
        await c2.register_type("a", 4)  # the first write times out; its rows land later
    with pytest.raises(ShardingError) as info:  # collides with its own late rows
        await c2.register_type("b", 2)
    assert not isinstance(info.value, CoordinatorFencedError)
    await c2.register_type("b", 2)  # caught up: serves on
    assert await c2.home("a", 0) == "n1"
    assert await c2.shard_counts() == {"a": 4, "b": 2}


async def test_a_failed_start_is_retried() -> None:
    journal, members = InMemoryJournal(), Membership("n1")
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise JournalUnavailableError("Cassandra is starting")
        return journal

    c = ShardCoordinator("sys", factory, members, CoordinatorSettings(), poll=False)
    with pytest.raises(JournalUnavailableError):
        await c.register_type("a", 4)
    await c.register_type("a", 4)  # not stuck with the first failure
    assert len(attempts) == 2
