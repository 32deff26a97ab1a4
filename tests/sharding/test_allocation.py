"""Allocation strategy properties (hypothesis). Pure: no Ray."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_guard import no_ray  # noqa: F401  (autouse: these tests must not start Ray)

from raysource.journal.errors import ConfigError
from raysource.sharding.allocation import (
    Move,
    ShardId,
    allocate,
    apply_moves,
    dead_moves,
    owners,
    reallocate_dead,
    rebalance,
)
from raysource.sharding.errors import NoLiveNodesError

NODES = [f"node-{i}" for i in range(6)]


@st.composite
def scenarios(draw):
    """(shards, nodes, live nodes): shards of 1-3 types, allocated one by one with ``allocate``
    or dumped arbitrarily (to model a node that joined late / a skewed table)."""
    types = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    shards = [ShardId(t, i) for t in types for i in range(draw(st.integers(0, 25)))]
    nodes = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=5, unique=True))
    skewed = draw(st.booleans())
    allocation: dict[str, set[ShardId]] = {}
    for s in shards:
        node = draw(st.sampled_from(nodes)) if skewed else allocate(s, allocation, nodes)
        allocation.setdefault(node, set()).add(s)
    live = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=5, unique=True))
    return shards, allocation, live


def _per_type_spread(allocation, live) -> dict[str, int]:
    types = {s.type_name for shards in allocation.values() for s in shards}
    return {
        t: max(sum(s.type_name == t for s in allocation.get(n, ())) for n in live)
        - min(sum(s.type_name == t for s in allocation.get(n, ())) for n in live)
        for t in types
    }


def _assert_exactly_once(allocation, shards) -> None:
    placed = Counter(s for ss in allocation.values() for s in ss)
    assert set(placed) == set(shards)
    assert all(c == 1 for c in placed.values())


@given(scenarios())
@settings(deadline=None)
def test_allocate_fills_least_loaded_live_node(sc) -> None:
    shards, _, live = sc
    allocation: dict[str, set[ShardId]] = {}
    for s in shards:
        node = allocate(s, allocation, live)
        assert node in live
        counts = [sum(x.type_name == s.type_name for x in allocation.get(n, ())) for n in live]
        assert sum(x.type_name == s.type_name for x in allocation.get(node, ())) == min(counts)
        allocation.setdefault(node, set()).add(s)
    _assert_exactly_once(allocation, shards)
    assert all(v <= 1 for v in _per_type_spread(allocation, live).values())


def test_allocate_is_deterministic_and_needs_a_live_node() -> None:
    s = ShardId("a", 0)
    assert allocate(s, {}, ["n2", "n1", "n3"]) == "n1"
    assert allocate(s, {"n1": {ShardId("a", 1)}}, ["n2", "n1"]) == "n2"
    # per-type load first, then total load
    alloc = {"n1": {ShardId("b", 0), ShardId("b", 1)}, "n2": {ShardId("a", 1)}}
    assert allocate(s, alloc, ["n1", "n2"]) == "n1"
    with pytest.raises(NoLiveNodesError):
        allocate(s, {}, [])


@given(scenarios())
@settings(deadline=None)
def test_reallocate_dead_only_live_nodes_exactly_once(sc) -> None:
    shards, allocation, live = sc
    moves = dead_moves(allocation, live)
    assert all(m.from_node not in live and m.to_node in live for m in moves)
    new = reallocate_dead(allocation, live)
    _assert_exactly_once(new, shards)
    assert set(new) <= set(live)
    # shards already on live nodes stay put
    before, after = owners(allocation), owners(new)
    assert all(after[s] == n for s, n in before.items() if n in live)


@given(scenarios(), st.integers(1, 7), st.integers(2, 4))
@settings(max_examples=200, deadline=None)
def test_rebalance_is_bounded_and_converges(sc, max_moves: int, threshold: int) -> None:
    shards, allocation, live = sc
    allocation = reallocate_dead(allocation, live)
    n = len(live)
    # Bound derived in sharding/allocation.py: per type, moves <= sum(max(0, c - floor(S/N))).
    bound = 0
    for t in {s.type_name for s in shards}:
        total = sum(s.type_name == t for s in shards)
        for node in live:
            c = sum(s.type_name == t for s in allocation.get(node, ()))
            bound += max(0, c - total // n)
    max_rounds = math.ceil(bound / max_moves) + 1
    moved: Counter[ShardId] = Counter()
    for _rounds in range(1, max_rounds + 1):
        moves = rebalance(allocation, live, max_moves, threshold)
        assert len(moves) <= max_moves
        assert all(m.from_node in live and m.to_node in live for m in moves)
        moved.update(m.shard for m in moves)
        allocation = apply_moves(allocation, moves)
        _assert_exactly_once(allocation, shards)
        if not moves:
            break
        if len(moves) < max_moves:  # a short round means balanced: the next one is empty
            assert rebalance(allocation, live, max_moves, threshold) == []
            break
    else:
        pytest.fail(f"no convergence in {max_rounds} rounds")
    assert sum(moved.values()) <= bound
    assert all(c == 1 for c in moved.values()), "a shard moved twice"
    assert all(v <= threshold - 1 for v in _per_type_spread(allocation, live).values())


def test_new_node_gets_a_bounded_share() -> None:
    shards = [ShardId("a", i) for i in range(30)]
    allocation = {"n1": set(shards[:15]), "n2": set(shards[15:])}
    moves = rebalance(allocation, ["n1", "n2", "n3"], max_moves=4)
    assert len(moves) == 4 and all(m.to_node == "n3" for m in moves)
    assert rebalance(allocation, ["n1", "n2", "n3"], max_moves=4) == moves  # deterministic


def test_rebalance_leaves_dead_nodes_and_rejects_bad_args() -> None:
    allocation = {"dead": {ShardId("a", i) for i in range(10)}, "n1": set()}
    assert rebalance(allocation, ["n1", "n2"], 5) == []
    with pytest.raises(ConfigError):
        rebalance(allocation, ["n1"], -1)
    with pytest.raises(ConfigError):
        rebalance(allocation, ["n1"], 1, threshold=1)


def test_apply_moves_checks_the_source() -> None:
    with pytest.raises(ConfigError):
        apply_moves({"n1": set()}, [Move(ShardId("a", 0), "n1", "n2")])
