"""Shard allocation strategy: pure functions over an allocation table (no Ray, no I/O).

An *allocation* maps a node id to the set of shards it hosts. Load is counted **per aggregate
type** (a node's count of shards of the shard's type), then by total shards on the node, then
by node id: every type spreads evenly over the nodes on its own (types differ in traffic), ties
are broken deterministically so every replay of the same decisions gives the same table.

Guarantees (checked by property tests in ``tests/sharding/test_allocation.py``):

* ``allocate`` returns a live node, the least loaded one for that shard's type.
* ``rebalance`` moves at most ``max_moves`` shards, only between live nodes, only while some
  type has ``max - min >= threshold`` shards per node; shards on dead nodes are left to
  ``dead_moves``. A node that receives a shard is never a source later (its count stays
  <= min + 1), so repeated rounds move each shard at most once and converge after at most
  ``sum_i max(0, count_i - floor(S/N))`` moves per type (S shards, N live nodes); every round
  but the last moves exactly ``max_moves``.
* ``dead_moves`` / ``reallocate_dead`` move every shard of a non-live node to a live node.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from raysource.journal.errors import ConfigError
from raysource.sharding.errors import NoLiveNodesError

__all__ = [
    "Allocation",
    "Move",
    "NodeId",
    "ShardId",
    "allocate",
    "apply_moves",
    "dead_moves",
    "owners",
    "reallocate_dead",
    "rebalance",
]

NodeId = str


@dataclass(frozen=True, slots=True, order=True)
class ShardId:
    """One shard of one aggregate type: ``(type_name, shard)``."""

    type_name: str
    shard: int

    def __str__(self) -> str:
        return f"{self.type_name}/{self.shard}"


Allocation = Mapping[NodeId, Collection[ShardId]]


@dataclass(frozen=True, slots=True)
class Move:
    """``shard`` leaves ``from_node`` for ``to_node``."""

    shard: ShardId
    from_node: NodeId
    to_node: NodeId


def _type_load(allocation: Allocation, node: NodeId, type_name: str) -> int:
    return sum(1 for s in allocation.get(node, ()) if s.type_name == type_name)


def _load_key(allocation: Allocation, node: NodeId, type_name: str) -> tuple[int, int, NodeId]:
    return (_type_load(allocation, node, type_name), len(allocation.get(node, ())), node)


def allocate(shard: ShardId, allocation: Allocation, live_nodes: Iterable[NodeId]) -> NodeId:
    """The live node that should host ``shard``: fewest shards of its type, then fewest shards,
    then smallest node id. Raises ``NoLiveNodesError`` if ``live_nodes`` is empty."""
    live = set(live_nodes)
    if not live:
        raise NoLiveNodesError(f"no live node to allocate shard {shard} to")
    return min(live, key=lambda n: _load_key(allocation, n, shard.type_name))


def owners(allocation: Allocation) -> dict[ShardId, NodeId]:
    """Invert an allocation (shard -> node). Raises ``ConfigError`` if a shard is on two nodes."""
    out: dict[ShardId, NodeId] = {}
    for node, shards in allocation.items():
        for s in shards:
            if s in out:
                raise ConfigError(f"shard {s} is allocated to both {out[s]} and {node}")
            out[s] = node
    return out


def apply_moves(allocation: Allocation, moves: Iterable[Move]) -> dict[NodeId, set[ShardId]]:
    """A new allocation with ``moves`` applied in order (the input is not modified).

    Nodes left without shards are dropped from the result."""
    out = {n: set(s) for n, s in allocation.items()}
    for m in moves:
        src = out.get(m.from_node)
        if src is None or m.shard not in src:
            raise ConfigError(f"move {m}: shard is not on {m.from_node}")
        src.remove(m.shard)
        out.setdefault(m.to_node, set()).add(m.shard)
    return {n: s for n, s in out.items() if s}


def dead_moves(allocation: Allocation, live_nodes: Iterable[NodeId]) -> list[Move]:
    """Moves that take every shard off non-live nodes, each to the least-loaded live node
    (decided one after the other, so they spread). Empty if no shard is on a dead node.
    Raises ``NoLiveNodesError`` if there are such shards but no live node."""
    live = set(live_nodes)
    work = {n: set(s) for n, s in allocation.items()}
    moves: list[Move] = []
    for node in sorted(n for n in allocation if n not in live):
        for shard in sorted(allocation[node]):
            target = allocate(shard, work, live)
            work[node].discard(shard)
            work.setdefault(target, set()).add(shard)
            moves.append(Move(shard, node, target))
    return moves


def reallocate_dead(
    allocation: Allocation, live_nodes: Iterable[NodeId]
) -> dict[NodeId, set[ShardId]]:
    """The allocation after moving every shard of a non-live node to live nodes."""
    live = set(live_nodes)
    return apply_moves(allocation, dead_moves(allocation, live))


def rebalance(
    allocation: Allocation,
    live_nodes: Iterable[NodeId],
    max_moves: int,
    threshold: int = 2,
) -> list[Move]:
    """At most ``max_moves`` moves that even out shards per type across live nodes.

    A move goes from a node with the most shards of a type to one with the fewest, and only
    while that difference is ``>= threshold`` (so after convergence ``max - min <=
    threshold - 1`` for every type). The most uneven type goes first. Deterministic.
    """
    if max_moves < 0:
        raise ConfigError(f"max_moves must be >= 0, got {max_moves}")
    if threshold < 2:
        # threshold 1 would move a shard back and forth between nodes of equal-ish load forever
        raise ConfigError(f"rebalance threshold must be >= 2, got {threshold}")
    live = sorted(set(live_nodes))
    if len(live) < 2:
        return []
    work = {n: set(allocation.get(n, ())) for n in live}
    types = sorted({s.type_name for shards in work.values() for s in shards})
    moves: list[Move] = []
    while len(moves) < max_moves:
        best: tuple[int, str, NodeId, NodeId] | None = None
        for t in types:
            counts = {n: _type_load(work, n, t) for n in live}
            src = max(live, key=lambda n: (counts[n], len(work[n]), n))
            dst = min(live, key=lambda n: (counts[n], len(work[n]), n))
            diff = counts[src] - counts[dst]
            if diff >= threshold and (best is None or diff > best[0]):
                best = (diff, t, src, dst)
        if best is None:
            break
        _, t, src, dst = best
        shard = max(s for s in work[src] if s.type_name == t)
        work[src].remove(shard)
        work[dst].add(shard)
        moves.append(Move(shard, src, dst))
    return moves
