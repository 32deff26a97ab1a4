"""The shard coordinator's pure half: its events and :class:`CoordinatorState`.

The allocation table is event-sourced. Decisions (``decide_*``) read the state and return
events; ``apply`` folds an event into the state; replaying the stored events rebuilds exactly
the live table. No I/O and no Ray here: :mod:`raysource.sharding.coordinator` is the thin async
host that persists these events and answers callers (as Pekko's ``ShardCoordinator`` keeps its
``State`` apart from the actor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.sharding.allocation import Move, NodeId, ShardId, allocate, dead_moves, rebalance
from raysource.sharding.errors import ShardCountChangedError

__all__ = [
    "CoordinatorEvent",
    "CoordinatorState",
    "NodeRemoved",
    "ShardAllocated",
    "ShardCountRegistered",
    "ShardMoved",
    "coordinator_persistence_id",
    "COORDINATOR_SERIALIZATION",
]


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class ShardCountRegistered:
    """Aggregate type ``type_name`` is split into ``number_of_shards`` shards (forever)."""

    type_name: str
    number_of_shards: int


@dataclass(frozen=True, slots=True)
class ShardAllocated:
    """Shard ``(type_name, shard)`` got its first home, ``node``."""

    type_name: str
    shard: int
    node: str


@dataclass(frozen=True, slots=True)
class ShardMoved:
    """Shard ``(type_name, shard)`` moved from ``from_node`` to ``to_node`` (rebalance, or its
    node died)."""

    type_name: str
    shard: int
    from_node: str
    to_node: str


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    """``node`` is dead; it holds no shards and never gets one again (Ray never reuses ids)."""

    node: str


CoordinatorEvent = ShardCountRegistered | ShardAllocated | ShardMoved | NodeRemoved

COORDINATOR_SERIALIZATION = Serialization()
for _cls in (ShardCountRegistered, ShardAllocated, ShardMoved, NodeRemoved):
    # Explicit, stable manifest names: these events are stored for the life of the system.
    COORDINATOR_SERIALIZATION.register(_cls, f"raysource.coordinator.{_cls.__name__}")


def coordinator_persistence_id(system: str) -> str:
    """The journal persistence id holding the coordinator table of ``system``."""
    return f"__coordinator__|{system}"


# ------------------------------------------------------------------------------------ state


@dataclass
class CoordinatorState:
    """The allocation table. Mutated only by :meth:`apply`; decisions never mutate it."""

    shard_counts: dict[str, int] = field(default_factory=dict)
    owner: dict[ShardId, NodeId] = field(default_factory=dict)
    removed_nodes: set[NodeId] = field(default_factory=set)

    # -------------------------------------------------------------- folding

    def apply(self, event: CoordinatorEvent) -> None:
        if isinstance(event, ShardCountRegistered):
            self.shard_counts[event.type_name] = event.number_of_shards
        elif isinstance(event, ShardAllocated):
            self.owner[ShardId(event.type_name, event.shard)] = event.node
        elif isinstance(event, ShardMoved):
            self.owner[ShardId(event.type_name, event.shard)] = event.to_node
        elif isinstance(event, NodeRemoved):
            self.removed_nodes.add(event.node)
        else:
            raise TypeError(f"not a coordinator event: {event!r}")

    @classmethod
    def replayed(cls, events: Iterable[CoordinatorEvent]) -> CoordinatorState:
        state = cls()
        for ev in events:
            state.apply(ev)
        return state

    # -------------------------------------------------------------- views

    def allocation(self) -> dict[NodeId, set[ShardId]]:
        out: dict[NodeId, set[ShardId]] = {}
        for shard, node in self.owner.items():
            out.setdefault(node, set()).add(shard)
        return out

    def usable(self, live_nodes: Iterable[NodeId]) -> set[NodeId]:
        """The live nodes minus those recorded as removed."""
        return set(live_nodes) - self.removed_nodes

    def check_shard(self, shard: ShardId) -> None:
        n = self.shard_counts.get(shard.type_name)
        if n is None:
            raise ConfigError(f"aggregate type {shard.type_name!r} is not registered")
        if not 0 <= shard.shard < n:
            raise ConfigError(
                f"shard {shard.shard} out of range 0..{n - 1} for {shard.type_name!r}"
            )

    # -------------------------------------------------------------- decisions

    def decide_register(self, type_name: str, number_of_shards: int) -> list[CoordinatorEvent]:
        """``[]`` if already registered with this count; ``ShardCountChangedError`` if with
        another; else the registration event."""
        if not isinstance(type_name, str) or not type_name or "|" in type_name:
            raise ConfigError(f"invalid aggregate type name {type_name!r}")
        if (
            isinstance(number_of_shards, bool)
            or not isinstance(number_of_shards, int)
            or number_of_shards < 1
        ):
            raise ConfigError(f"number of shards must be an int >= 1, got {number_of_shards!r}")
        known = self.shard_counts.get(type_name)
        if known == number_of_shards:
            return []
        if known is not None:
            raise ShardCountChangedError(type_name, known, number_of_shards)
        return [ShardCountRegistered(type_name, number_of_shards)]

    def decide_home(self, shard: ShardId, live_nodes: Iterable[NodeId]) -> list[CoordinatorEvent]:
        """Events that give ``shard`` a live home: none if it has one, an allocation if it
        never had one, a move if its node is not live. ``NoLiveNodesError`` if none is."""
        self.check_shard(shard)
        live = self.usable(live_nodes)
        current = self.owner.get(shard)
        if current is not None and current in live:
            return []
        target = allocate(shard, self.allocation(), live)
        if current is None:
            return [ShardAllocated(shard.type_name, shard.shard, target)]
        return [ShardMoved(shard.type_name, shard.shard, current, target)]

    def decide_dead(self, live_nodes: Iterable[NodeId]) -> list[CoordinatorEvent]:
        """Move every shard off nodes that are not live, then record those nodes removed.
        ``[]`` if no shard is on a dead node (or no live node exists to take them)."""
        live = self.usable(live_nodes)
        allocation = self.allocation()
        dead = sorted(n for n in allocation if n not in live)
        if not dead or not live:
            return []
        events: list[CoordinatorEvent] = [
            ShardMoved(m.shard.type_name, m.shard.shard, m.from_node, m.to_node)
            for m in dead_moves(allocation, live)
        ]
        events += [NodeRemoved(n) for n in dead if n not in self.removed_nodes]
        return events

    def plan_rebalance(
        self, live_nodes: Iterable[NodeId], max_moves: int, threshold: int = 2
    ) -> list[Move]:
        """One bounded rebalance round among live nodes (see ``allocation.rebalance``)."""
        return rebalance(self.allocation(), self.usable(live_nodes), max_moves, threshold)
