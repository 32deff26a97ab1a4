"""Shard regions: the per-node activation gate of a raysource system.

One :class:`ShardRegion` Ray actor runs per (system, Ray node), pinned to its node and named
``"{system}:region:{node_id}"``. It is on the *activation* path, never on the per-command path:

* ``activate(type_name, entity_id)`` get-or-creates the host actor of an aggregate on this node
  (dedicated: the aggregate's own actor; hosted: the shared host of its shard's slot on this
  node, one of the type's ``hosts_per_node``) and returns the handle. Ray's named-actor
  registry keeps one live activation per name cluster-wide; a shared host serves a shard only
  after the coordinator confirmed this node is its home (:class:`HomeCheck`).
* It enforces the per-node cap on active dedicated aggregates: past ``max_active_per_node`` the
  least recently activated one is passivated (it finishes its queued commands first).
* With a warm pool (``SystemSpec.warm_pool`` > 0: :mod:`raysource.sharding.warm_pool`) a
  dedicated activation takes a pre-started host actor of this node instead of creating one.
  Pool hosts cannot carry the aggregate's name, so the region keeps what the name gave: its
  registry (one live activation per aggregate; the next waits for the previous one to exit),
  a home check per assignment (only the shard's home node assigns), and a handoff counter per
  shard (an assignment a handoff overtook is stopped and refused, ``AggregateStoppedError``:
  the resolver asks the coordinator afresh).
* ``handoff(shard)`` (the coordinator's :class:`~raysource.sharding.coordinator.HandoffTarget`
  protocol) stops every activation of a moving shard, wherever it runs, before the shard's new node
  activates it (a shared host stops and revokes only that shard; its other shards go on).
  Activations are found through Ray's named-actor list, so a restarted region (or one on another
  node) hands off correctly without remembering anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from raysource.journal.errors import ConfigError
from raysource.runtime.actors.cluster import coordinator_name, parse_name, region_name
from raysource.runtime.actors.host_actor import HostActor, HostSpec, actor_options, slot_of
from raysource.runtime.aggregate import AggregateType, split_persistence_id
from raysource.runtime.errors import AggregateStoppedError
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec
from raysource.sharding.allocation import NodeId, ShardId
from raysource.sharding.ray_nodes import named_actors, node_affinity
from raysource.sharding.warm_pool import PoolSettings, WarmPool

__all__ = ["HomeCheck", "SystemSpec", "ShardRegion", "region_name"]

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 30.0  # the coordinator answers a moving shard only after the move
_EVICT_CONCURRENCY = 64  # passivations of evicted dedicated actors in flight per region


@dataclass(frozen=True)
class HomeCheck:
    """A shared host's :class:`~raysource.runtime.actors.host_actor.ShardOwner`: asks the
    system's coordinator whether ``node_id`` is the home of a shard. The coordinator answers
    for a shard that is being handed off only once the move is recorded, so a check cannot
    confirm the old home after its handoff began."""

    system: str
    namespace: str | None
    node_id: NodeId

    async def __call__(self, type_name: str, shard: int) -> bool:
        loop = asyncio.get_running_loop()
        coordinator = await loop.run_in_executor(
            None, lambda: ray.get_actor(coordinator_name(self.system), namespace=self.namespace)
        )
        home: NodeId = await asyncio.wait_for(
            coordinator.home.remote(type_name, shard), _CHECK_TIMEOUT_S
        )
        return home == self.node_id


@dataclass(frozen=True)
class SystemSpec:
    """Everything a region needs to create host actors; picklable (shipped to every node).

    ``host_settings`` maps a type name to :class:`~raysource.runtime.actors.host_actor.HostSpec`
    overrides (e.g. ``{"show": {"idle_timeout_s": 30, "max_active": 5000, "hosts_per_node": 4}}``;
    ``hosts_per_node``: a hosted type's shared host actors per node, shard ``s`` in slot
    ``s % hosts_per_node``); ``placement`` overrides a type's declared placement by name.
    ``warm_pool``: pre-started idle host actors per node for dedicated activations
    (:class:`~raysource.sharding.warm_pool.PoolSettings`; size 0, the default: none).
    """

    name: str
    store: StoreSpec
    types: tuple[AggregateType, ...]
    namespace: str | None = None
    max_active_per_node: int = 2000
    host_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    placement: Mapping[str, str] = field(default_factory=dict)
    warm_pool: PoolSettings = field(default_factory=PoolSettings)

    def type_named(self, type_name: str) -> AggregateType:
        for t in self.types:
            if t.name == type_name:
                return t
        known = ", ".join(t.name for t in self.types) or "none"
        raise ConfigError(f"unknown aggregate type {type_name!r} (registered: {known})")

    def placement_of(self, aggregate_type: AggregateType) -> str:
        return self.placement.get(aggregate_type.name, aggregate_type.placement)

    def host_spec(
        self, aggregate_type: AggregateType, entity_id: str, node_id: NodeId | None = None
    ) -> HostSpec:
        """The host of ``entity_id``: dedicated, its own; hosted, the shared host of its shard's
        slot on ``node_id`` (the shard's home)."""
        settings = dict(self.host_settings.get(aggregate_type.name, {}))
        shard = shard_of(entity_id, aggregate_type.number_of_shards)
        if self.placement_of(aggregate_type) == "dedicated":
            return HostSpec(
                self.name,
                aggregate_type,
                self.store,
                "dedicated",
                entity_id=entity_id,
                shard=shard,
                **settings,
            )
        if node_id is None:
            raise ConfigError(f"the host of a hosted {aggregate_type.name!r} needs its node")
        spec = HostSpec(
            self.name,
            aggregate_type,
            self.store,
            "hosted",
            slot=0,
            node_id=node_id,
            owner=HomeCheck(self.name, self.namespace, node_id),
            **settings,
        )
        return replace(spec, slot=slot_of(shard, spec.hosts))


class ShardRegion:
    """The per-node region actor (see the module docstring). Methods are coroutines; call them
    as ``handle.<method>.remote(...)``."""

    def __init__(self, spec: SystemSpec, node_id: NodeId) -> None:
        self.spec = spec
        self.node_id = node_id
        # name -> handle of dedicated activations made here, least recently activated first
        self._dedicated: OrderedDict[str, Any] = OrderedDict()
        self._hosted: dict[str, Any] = {}
        self.activations = 0
        self.evictions = 0
        self.eviction_batches = 0
        self._evict_queue: list[tuple[str, Any]] = []  # evicted, passivation not yet sent
        self._evictor: asyncio.Future[None] | None = None
        self._pool = (
            WarmPool(
                spec.name,
                spec.namespace,
                node_id,
                spec.store,
                spec.warm_pool,
                node_affinity(node_id),
            )
            if spec.warm_pool.size > 0
            else None
        )
        self._handoffs: dict[tuple[str, int], int] = {}  # handoffs begun here, per shard
        self._assigning: dict[str, asyncio.Future[Any]] = {}  # pool assignments in progress

    async def activate(self, type_name: str, entity_id: str) -> Any:
        """The host actor handle for ``entity_id`` (created on this node if not running)."""
        aggregate_type = self.spec.type_named(type_name)
        spec = self.spec.host_spec(aggregate_type, entity_id, self.node_id)
        name = spec.actor_name
        cache = self._dedicated if spec.placement == "dedicated" else self._hosted
        if name in cache:
            if spec.placement == "dedicated":
                self._dedicated.move_to_end(name)
            return cache[name]
        if self._pool is not None and spec.placement == "dedicated":
            handle = await self._from_pool(spec)
            if name in cache:  # a concurrent activation of the same aggregate won
                return cache[name]
        else:
            handle = await self._create(spec)
        cache[name] = handle
        self.activations += 1
        if spec.placement == "dedicated":
            await self._enforce_cap()
        return handle

    async def _create(self, spec: HostSpec) -> Any:
        opts = actor_options(spec, self.spec.namespace, **node_affinity(self.node_id))
        # get-or-create by name asks the GCS synchronously: keep it off the event loop
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: HostActor.options(**opts).remote(spec))

    async def _from_pool(self, spec: HostSpec) -> Any:
        """A dedicated activation through the warm pool (one at a time per aggregate)."""
        name = spec.actor_name
        running = self._assigning.get(name)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._assign(spec))
        self._assigning[name] = task
        try:
            return await asyncio.shield(task)
        finally:
            if self._assigning.get(name) is task:
                del self._assigning[name]

    async def _assign(self, spec: HostSpec) -> Any:
        pool = self._pool
        assert pool is not None and spec.shard is not None
        await pool.ready()
        name = spec.actor_name
        key = (spec.aggregate_type.name, spec.shard)
        handoffs = self._handoffs.get(key, 0)
        previous = await pool.previous(name)  # waits for a let-go activation to exit
        if previous is not None:
            return previous
        loop = asyncio.get_running_loop()
        try:  # an activation created by name (pool empty, or before the pool) keeps its name
            return await loop.run_in_executor(
                None, functools.partial(ray.get_actor, name, namespace=self.spec.namespace)
            )
        except ValueError:
            pass
        home = HomeCheck(self.spec.name, self.spec.namespace, self.node_id)
        if not await home(*key):
            raise AggregateStoppedError(
                f"{name}: shard {spec.shard} is not homed on {self.node_id}; not applied"
            )
        handle = await pool.take(spec)
        if handle is None:
            handle = await self._create(spec)  # pool empty: pay the process start
        if self._handoffs.get(key, 0) != handoffs:  # a handoff of the shard overtook us
            pool.release(name)
            await asyncio.gather(handle.passivate.remote(), return_exceptions=True)
            raise AggregateStoppedError(f"{name}: shard {spec.shard} moved; not applied")
        return handle

    def forget(self, actor_name: str) -> None:
        """Drop a cached handle (the caller found the actor retired or dead)."""
        self._dedicated.pop(actor_name, None)
        self._hosted.pop(actor_name, None)
        if self._pool is not None:
            self._pool.release(actor_name)

    async def _enforce_cap(self) -> None:
        """Past ``max_active_per_node``: the least recently activated leave the table now
        and are passivated in the background, in batches (every eviction due when a batch
        starts, at most ``_EVICT_CONCURRENCY`` passivations in flight). The activation that
        crossed the cap does not wait for them (it used to await each passivation, so every
        activation past the cap paid a full stop of another actor)."""
        while len(self._dedicated) > self.spec.max_active_per_node:
            evicted = self._dedicated.popitem(last=False)
            if self._pool is not None:
                self._pool.release(evicted[0])
            self._evict_queue.append(evicted)
            self.evictions += 1
        if self._evict_queue and (self._evictor is None or self._evictor.done()):
            self._evictor = asyncio.ensure_future(self._evict())

    async def _evict(self) -> None:
        gate = asyncio.Semaphore(_EVICT_CONCURRENCY)

        async def one(name: str, handle: Any) -> None:
            async with gate:
                try:
                    await handle.passivate.remote()
                except Exception as exc:  # already gone: nothing to passivate
                    log.debug("evicting %s: %r", name, exc)

        while self._evict_queue:
            batch, self._evict_queue = self._evict_queue, []
            self.eviction_batches += 1
            await asyncio.gather(*(one(n, h) for n, h in batch))

    async def handoff(self, shard: ShardId) -> int:
        """Stop every activation of ``shard`` (queued work first); returns how many."""
        aggregate_type = self.spec.type_named(shard.type_name)
        key = (shard.type_name, shard.shard)
        self._handoffs[key] = self._handoffs.get(key, 0) + 1  # before any await
        calls: list[Any] = []
        if self._pool is not None:  # pool hosts serving the shard (they carry no entity name)
            await self._pool.ready()
            for name, handle in list(self._pool.assigned.items()):
                parsed = parse_name(name)
                if parsed is None or parsed.persistence_id is None:
                    continue
                ptype, eid = split_persistence_id(parsed.persistence_id)
                if ptype == aggregate_type.name and (
                    shard_of(eid, aggregate_type.number_of_shards) == shard.shard
                ):
                    self.forget(name)
                    calls.append(handle.passivate.remote())
        loop = asyncio.get_running_loop()
        names = await loop.run_in_executor(
            None, named_actors, self.spec.namespace, f"{self.spec.name}:"
        )
        for name, namespace in names:
            parsed = parse_name(name)
            if (
                parsed is None
                or parsed.system != self.spec.name
                or parsed.type_name != aggregate_type.name
            ):
                continue
            if parsed.kind == "hosted" and parsed.slot is not None:
                target = "shared"  # any node's: it revokes the shard even if it is checking it
            elif parsed.kind == "hosted" and parsed.shard == shard.shard:
                target = "hosted"
            elif parsed.kind == "dedicated" and parsed.persistence_id is not None:
                _, eid = split_persistence_id(parsed.persistence_id)
                if shard_of(eid, aggregate_type.number_of_shards) != shard.shard:
                    continue
                target = "dedicated"
            else:
                continue
            if target != "shared":  # a shared host lives on with its other shards
                self.forget(name)
            try:
                handle = await loop.run_in_executor(
                    None, functools.partial(ray.get_actor, name, namespace=namespace)
                )
            except ValueError:
                continue  # exited meanwhile
            if target in ("hosted", "shared"):
                calls.append(handle.handoff.remote([shard.shard]))
            else:
                calls.append(handle.passivate.remote())
        results = await asyncio.gather(*calls, return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def info(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "dedicated": len(self._dedicated),
            "hosted": len(self._hosted),
            "activations": self.activations,
            "evictions": self.evictions,
            "eviction_batches": self.eviction_batches,
            "evicting": len(self._evict_queue),
            "pool": None if self._pool is None else self._pool.info(),
        }

    async def fill_pool(self) -> dict[str, Any] | None:
        """Start filling the warm pool now (it also starts on the first activation); returns
        ``info()["pool"]``."""
        if self._pool is None:
            return None
        await self._pool.ready()
        return self._pool.info()

    async def close_pool(self) -> int:
        """Stop refilling and send the idle pool hosts away (``System.shutdown``)."""
        return 0 if self._pool is None else await self._pool.close()

    async def ping(self) -> str:
        return "pong"


RegionActor = ray.remote(ShardRegion)


def get_or_create_region(spec: SystemSpec, node_id: NodeId) -> Any:
    """The region actor of ``node_id`` (created, pinned to that node, if missing)."""
    options: dict[str, Any] = {
        "name": region_name(spec.name, node_id),
        "lifetime": "detached",
        "get_if_exists": True,
        # No restarts: a region pinned to a dead node would otherwise sit in RESTARTING
        # forever, holding its name and swallowing calls. It is stateless; the resolver
        # re-creates it (get-or-create) when it is needed again on a live node.
        "max_restarts": 0,
        "max_concurrency": 1000,
        **node_affinity(node_id),
    }
    if spec.namespace is not None:
        options["namespace"] = spec.namespace
    return RegionActor.options(**options).remote(spec, node_id)
