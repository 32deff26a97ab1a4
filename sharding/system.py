"""The raysource system: one object to start (or join) a system on a Ray cluster and talk to
its aggregates.

    system = System.start("shop", store=StoreSpec.for_cassandra(config), types=[SHOW])
    show = system.entity(SHOW, "hamlet-2026-12-01")
    show.ask(ReserveSeat("A1", "alice"))             # reply, or a typed error
    show.actor.ask_ordered.remote(...)                # or the raw Ray actor handle
    system.shutdown()

``System.start`` is get-or-create: every driver or actor of the cluster that calls it with the
same name (and namespace) joins the same system — the coordinator is a named, detached actor.
``System.connect`` only joins: it never creates a coordinator, registers a type or starts a
timer service, and it takes each type's shard count from the running system (a tool reading a
live aggregate, e.g. ``raysource state``).
Commands never pass through the coordinator: an :class:`~raysource.runtime.actors.refs.EntityRef`
resolves (entity -> shard -> node -> region -> host actor) once, caches the handle and calls it
directly. A dead handle or a moved shard makes the ref re-resolve (see
:mod:`raysource.runtime.actors.refs` for which failures are re-sent and which are reported as
"outcome unknown").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from raysource.journal.api import Journal
from raysource.journal.errors import ConfigError, RaysourceError
from raysource.runtime.actors.cluster import connect_ray
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec, open_stores
from raysource.sharding.coordinator import CoordinatorSettings
from raysource.sharding.errors import NoLiveNodesError, ShardingError
from raysource.sharding.ray_nodes import (
    get_coordinator,
    get_or_create_coordinator,
    live_nodes,
    named_actors,
    stop_coordinator,
)
from raysource.sharding.region import SystemSpec, get_or_create_region
from raysource.sharding.retention_service import (
    RetentionSettings,
    get_or_create_retention_service,
    retention_service_name,
)
from raysource.sharding.timer_pump import TimerSettings
from raysource.sharding.timer_service import get_or_create_timer_service
from raysource.sharding.warm_pool import PoolSettings

__all__ = ["System", "ShardedResolver", "CoordinatorJournal", "forget_live"]

log = logging.getLogger(__name__)

_RESOLVE_DEADLINE_S = 30.0  # covers Ray noticing a dead node and the coordinator re-homing
_ACTIVATE_TIMEOUT_S = 15.0
_MAX_CACHED_HANDLES = 100_000  # a region pinned to a node that just died never answers


@dataclass(frozen=True)
class CoordinatorJournal:
    """Picklable journal factory for the coordinator: the system's own store."""

    store: StoreSpec

    async def __call__(self) -> Journal:
        journal, _snapshots = await open_stores(self.store)
        return journal


class ShardedResolver:
    """:class:`~raysource.runtime.actors.refs.Resolver` through the coordinator: entity -> shard ->
    home node -> that node's region -> the host actor (created on the home node). Caches shard
    homes, regions and handles: per aggregate for dedicated types, per shard for hosted ones (every
    aggregate of a shard lives in the same shared host, so touching many aggregates costs one
    region round trip per shard, not per aggregate); ``invalidate`` drops the handle (a hosted
    shard's for all its aggregates) and makes the next resolve ask the coordinator afresh."""

    def __init__(self, spec: SystemSpec, coordinator: Any) -> None:
        self.spec = spec
        self.coordinator = coordinator
        self._lock = threading.Lock()
        self._homes: dict[tuple[str, int], str] = {}
        self._stale: set[tuple[str, int]] = set()
        self._regions: dict[str, Any] = {}
        # least recently resolved first; bounded so a long-lived driver does not grow forever
        self._handles: OrderedDict[tuple[str, str | int], Any] = OrderedDict()
        self._hosted = {t.name for t in spec.types if spec.placement_of(t) == "hosted"}
        self.resolves = 0  # coordinator round trips (cold resolves), for benchmarks
        self.activations = 0  # region round trips, for benchmarks and tests

    def resolve(self, aggregate_type: AggregateType, entity_id: str) -> Any:
        aggregate_type.persistence_id(entity_id)  # validate before touching Ray
        key = self._key(aggregate_type, entity_id)
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
        if handle is not None:
            return handle
        shard = shard_of(entity_id, aggregate_type.number_of_shards)
        deadline = time.monotonic() + _RESOLVE_DEADLINE_S
        while True:
            node = None
            try:
                node = self._home(aggregate_type.name, shard)
                region = self._region(node)
                self.activations += 1
                handle = ray.get(
                    region.activate.remote(aggregate_type.name, entity_id),
                    timeout=_ACTIVATE_TIMEOUT_S,
                )
                break
            except RayTaskError as err:
                cause = err.cause if isinstance(err.cause, BaseException) else err
                if isinstance(cause, ConfigError):  # unknown type, bad shard: not transient
                    raise cause from None
                failure: BaseException = cause
            except (RayActorError, GetTimeoutError, RayError) as err:
                # the coordinator is restarting, or the region's node is gone (any other Ray
                # failure is retried the same way, then typed as NoLiveNodesError)
                failure = err
            with self._lock:  # ask the coordinator afresh (it re-homes a dead node's shards)
                self._stale.add((aggregate_type.name, shard))
                self._homes.pop((aggregate_type.name, shard), None)
                if node is not None:
                    self._regions.pop(node, None)
            if time.monotonic() > deadline:
                raise NoLiveNodesError(
                    f"could not activate {aggregate_type.persistence_id(entity_id)}: {failure}"
                ) from failure
            time.sleep(0.2)
        with self._lock:
            self._handles[key] = handle
            while len(self._handles) > _MAX_CACHED_HANDLES:
                self._handles.popitem(last=False)
        return handle

    def _key(self, aggregate_type: AggregateType, entity_id: str) -> tuple[str, str | int]:
        """The handle cache's key: the entity (dedicated) or its shard (hosted)."""
        if aggregate_type.name in self._hosted:
            return aggregate_type.name, shard_of(entity_id, aggregate_type.number_of_shards)
        return aggregate_type.name, entity_id

    def _home(self, type_name: str, shard: int) -> str:
        with self._lock:
            node = self._homes.get((type_name, shard))
            refresh = (type_name, shard) in self._stale
        if node is not None:
            return node
        self.resolves += 1
        node = ray.get(
            self.coordinator.home.remote(type_name, shard, refresh=refresh),
            timeout=_ACTIVATE_TIMEOUT_S,
        )
        with self._lock:
            self._homes[(type_name, shard)] = node
            self._stale.discard((type_name, shard))
        return node

    def _region(self, node: str) -> Any:
        with self._lock:
            region = self._regions.get(node)
        if region is None:
            region = get_or_create_region(self.spec, node)
            self.coordinator.register_region.remote(node, region)
            with self._lock:
                self._regions[node] = region
        return region

    def invalidate(self, aggregate_type: AggregateType, entity_id: str, handle: Any = None) -> None:
        key = self._key(aggregate_type, entity_id)
        shard = shard_of(entity_id, aggregate_type.number_of_shards)
        with self._lock:
            if handle is None or self._handles.get(key) is handle:
                self._handles.pop(key, None)
            # the shard may have moved or its node died: ask the coordinator next time
            node = self._homes.pop((aggregate_type.name, shard), None)
            self._stale.add((aggregate_type.name, shard))
            region = self._regions.get(node) if node is not None else None
        if region is not None:
            # the region must not hand the retired (or dead) activation out again
            name = self.spec.host_spec(aggregate_type, entity_id, node).actor_name
            region.forget.remote(name)


class System:
    """A raysource system on a Ray cluster. Build with :meth:`start` (start or join), or
    :meth:`connect` (join a running one only)."""

    def __init__(self, spec: SystemSpec, coordinator: Any) -> None:
        self.spec = spec
        self.coordinator = coordinator
        self.resolver = ShardedResolver(spec, coordinator)
        self._types = {t.name: t for t in spec.types}

    @classmethod
    def start(
        cls,
        name: str,
        *,
        store: StoreSpec,
        types: Iterable[AggregateType],
        address: str | None = None,
        namespace: str | None = None,
        coordinator_settings: CoordinatorSettings | None = None,
        max_active_per_node: int = 2000,
        host_settings: Mapping[str, Mapping[str, Any]] | None = None,
        placement: Mapping[str, str] | None = None,
        timers: TimerSettings | None = TimerSettings(),  # noqa: B008 - frozen, shared safely
        retention: RetentionSettings | None = None,
        warm_pool: int | PoolSettings = 0,
    ) -> System:
        """Start the system ``name`` on Ray (connecting with ``address`` if Ray is not yet
        initialised in this process) or join it if it runs. Registers ``types`` with the
        coordinator: a changed ``number_of_shards`` of a type with data is refused
        (``ShardCountChangedError``). ``host_settings``: per type name, fields of
        :class:`~raysource.runtime.actors.host_actor.HostSpec` (``idle_timeout_s``,
        ``max_active``, ``hosts_per_node``: a hosted type's shared host actors per node,
        default 2, shard ``s`` in slot ``s % hosts_per_node``, ...; an unknown or invalid
        setting is a ``ConfigError`` here, before Ray is touched). ``timers``: the settings
        of the timer services that fire durable timers (one per node,
        :mod:`raysource.sharding.timer_service`; started for Cassandra stores); None starts
        none (timers are then still journaled and indexed, and fire once a system with
        services runs). ``retention``: opt in to the background retention cleaner (one actor
        per system, :mod:`raysource.sharding.retention_service`; Cassandra stores and types
        whose policy deletes only); None (the default): only ``raysource retention run``
        applies the policies. ``warm_pool``: pre-started idle host actors per node that
        dedicated activations take instead of starting a process (an int: the pool's size, or
        :class:`~raysource.sharding.warm_pool.PoolSettings`; 0: none); each node's pool
        starts filling now (see :meth:`pool_info`)."""
        types = tuple(types)
        spec = _system_spec(
            name, store, types, namespace, max_active_per_node, host_settings, placement, warm_pool
        )
        if retention is not None and store.kind != "cassandra":
            raise ConfigError("the background retention cleaner needs a Cassandra store")
        connect_ray(address, namespace)
        namespace = namespace or ray.get_runtime_context().namespace
        spec = dataclasses.replace(spec, namespace=namespace)
        coordinator = get_or_create_coordinator(
            name, CoordinatorJournal(store), coordinator_settings, namespace=namespace
        )
        for t in types:
            _ask_coordinator(
                lambda t=t: coordinator.register_type.remote(t.name, t.number_of_shards),
                f"registering aggregate type {t.name!r}",
            )
        if timers is not None and store.kind == "cassandra":
            for node in live_nodes():
                get_or_create_timer_service(spec, node, timers)
        if retention is not None and any(t.retention.deletes for t in types):
            get_or_create_retention_service(spec, retention)
        if spec.warm_pool.size > 0:
            for node in live_nodes():
                get_or_create_region(spec, node).fill_pool.remote()
        return cls(spec, coordinator)

    @classmethod
    def connect(
        cls,
        name: str,
        *,
        store: StoreSpec,
        types: Iterable[AggregateType],
        address: str | None = None,
        namespace: str | None = None,
        host_settings: Mapping[str, Mapping[str, Any]] | None = None,
        placement: Mapping[str, str] | None = None,
    ) -> System:
        """Join the running system ``name`` without starting anything: no coordinator is
        created, no type registered, no timer service started. Each of ``types`` must be
        registered with the running system; its ``number_of_shards`` is taken from there
        (the running system's count wins, so entities resolve to the shards they live on).
        ``store``, ``host_settings`` and ``placement`` are used as in :meth:`start` for
        activations this process causes. Raises ``ConfigError`` when no such system runs
        (nothing is created for it) or a type is not registered; a duplicate type name or
        invalid host settings are a ``ConfigError`` before Ray is touched."""
        types = tuple(types)
        spec = _system_spec(name, store, types, namespace, 2000, host_settings, placement)
        connect_ray(address, namespace)
        namespace = namespace or ray.get_runtime_context().namespace
        try:
            coordinator = get_coordinator(name, namespace=namespace)
        except ValueError:
            raise ConfigError(
                f"no raysource system {name} is running on this Ray cluster "
                f"(namespace {namespace!r})"
            ) from None
        counts: dict[str, int] = _ask_coordinator(
            coordinator.shard_counts.remote, f"reading the aggregate types of system {name!r}"
        )
        joined = []
        for t in types:
            if t.name not in counts:
                raise ConfigError(
                    f"aggregate type {t.name!r} is not registered in system {name} "
                    f"(registered: {', '.join(sorted(counts)) or 'none'})"
                )
            joined.append(dataclasses.replace(t, number_of_shards=counts[t.name]))
        spec = dataclasses.replace(spec, types=tuple(joined), namespace=namespace)
        return cls(spec, coordinator)

    @property
    def name(self) -> str:
        return self.spec.name

    def aggregate_type(self, type_or_name: AggregateType | str) -> AggregateType:
        name = type_or_name if isinstance(type_or_name, str) else type_or_name.name
        try:
            return self._types[name]
        except KeyError:
            raise ConfigError(
                f"aggregate type {name!r} is not part of system {self.name!r} "
                f"(registered: {', '.join(self._types) or 'none'})"
            ) from None

    def entity(self, type_or_name: AggregateType | str, entity_id: str) -> EntityRef:
        """A reference to the aggregate ``(type, entity_id)``: ``ask``, ``ask_async``,
        ``tell`` and ``.actor`` (the Ray handle of its current activation). Each reference is
        one caller: commands sent through it are processed in send order."""
        return EntityRef(self.aggregate_type(type_or_name), entity_id, self.resolver)

    def allocation(self) -> dict[str, list]:
        """The coordinator's table: node id -> shards."""
        return _ask_coordinator(self.coordinator.allocation.remote, "reading the allocation")

    def timer_info(self, *, timeout: float = 15.0) -> list[dict[str, Any]]:
        """``info()`` of every timer service of this system (fired, retried, backlog, owned
        shards, lateness p50/p99/max in ms), one per node."""
        handles = [
            ray.get_actor(n, namespace=ns)
            for n, ns in named_actors(self.spec.namespace, f"{self.name}:timers:")
        ]
        return ray.get([h.info.remote() for h in handles], timeout=timeout)

    def retention_info(self, *, timeout: float = 15.0) -> dict[str, Any] | None:
        """``info()`` of the background retention cleaner (None if it does not run)."""
        try:
            handle = ray.get_actor(retention_service_name(self.name), namespace=self.spec.namespace)
        except ValueError:
            return None
        return dict(ray.get(handle.info.remote(), timeout=timeout))

    def forget_live(self, subject: str, *, timeout: float = 60.0) -> int:
        """Make a forget reach the live aggregates: :func:`forget_live` on this system."""
        return forget_live(self.name, self.spec.namespace, subject, timeout=timeout)

    def pool_info(self, *, timeout: float = 15.0) -> dict[str, dict[str, Any] | None]:
        """Per node id: its warm pool's counters and registry sizes (``ShardRegion.info()
        ["pool"]``: idle, starting, assigned, taken, misses, dead_idle, ...; None: no pool)."""
        nodes = live_nodes()
        regions = [get_or_create_region(self.spec, n) for n in nodes]
        infos = ray.get([r.fill_pool.remote() for r in regions], timeout=timeout)
        return dict(zip(nodes, infos))

    def shutdown(self, *, timeout: float = 30.0) -> None:
        """Passivate and stop every actor of this system (hosts, regions, coordinator, the
        timer and retention services). Acknowledged commands are durable in the journal; the
        next start recovers them."""
        if self.spec.warm_pool.size > 0:  # no refills behind our back: idle pool hosts exit
            pools: list[Any] = []
            for name, namespace in named_actors(self.spec.namespace, f"{self.name}:region:"):
                try:
                    pools.append(ray.get_actor(name, namespace=namespace).close_pool.remote())
                except ValueError:
                    continue
            if pools:
                ray.wait(pools, num_returns=len(pools), timeout=timeout)
        hosts: list[Any] = []
        regions: list[Any] = []
        timers: list[Any] = []
        for name, namespace in named_actors(self.spec.namespace, f"{self.name}:"):
            try:
                h = ray.get_actor(name, namespace=namespace)
            except ValueError:
                continue
            if name == retention_service_name(self.name):  # stops first: no deletes after
                ray.wait([h.stop.remote()], timeout=timeout)
                ray.kill(h, no_restart=True)
                continue
            (regions if ":region:" in name else timers if ":timers:" in name else hosts).append(h)
        if timers:  # no fires into a stopping system
            ray.wait([t.stop.remote() for t in timers], num_returns=len(timers), timeout=timeout)
        pending = [h.handoff.remote(None) for h in hosts]  # finish queued work, then exit
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=timeout)
        for h in hosts + regions + timers:
            try:
                ray.kill(h)
            except Exception:  # already exited
                pass
        stop_coordinator(self.name, namespace=self.spec.namespace)


def forget_live(system: str, namespace: str | None, subject: str, *, timeout: float = 60.0) -> int:
    """Make a forget reach the live aggregates of ``system`` (call it after ``raysource
    forget SUBJECT`` or ``forget_subject``; ``raysource forget SUBJECT --system NAME`` does):
    every host of a type with personal fields drops the subject's cached key and passivates
    its active aggregates, which recover with the placeholder on their next command
    (:meth:`~raysource.runtime.host.AggregateHost.forget_subject`). Returns how many
    aggregates were stopped. A host that exits meanwhile is skipped (it holds nothing)."""
    if not subject or not subject.strip():
        raise ConfigError("a subject id must be non-empty")
    calls: list[Any] = []
    for name, ns in named_actors(namespace, f"{system}:"):
        if ":region:" in name or ":timers:" in name or name == retention_service_name(system):
            continue
        try:
            calls.append(ray.get_actor(name, namespace=ns).forget_subject.remote(subject))
        except (ValueError, AttributeError):  # gone meanwhile, or not a host
            continue
    stopped = 0
    for ref in calls:
        try:
            stopped += int(ray.get(ref, timeout=timeout))
        except (RayActorError, RayTaskError):  # exited, or retired meanwhile
            continue
    return stopped


def _system_spec(
    name: str,
    store: StoreSpec,
    types: tuple[AggregateType, ...],
    namespace: str | None,
    max_active_per_node: int,
    host_settings: Mapping[str, Mapping[str, Any]] | None,
    placement: Mapping[str, str] | None,
    warm_pool: int | PoolSettings = 0,
) -> SystemSpec:
    """The spec of a system (checked before Ray is touched: unique type names, and every
    type's host settings make a valid HostSpec, else ``ConfigError``)."""
    names = [t.name for t in types]
    if len(set(names)) != len(names):
        raise ConfigError(f"aggregate type names must be unique, got {names}")
    spec = SystemSpec(
        name=name,
        store=store,
        types=types,
        namespace=namespace,
        max_active_per_node=max_active_per_node,
        host_settings=dict(host_settings or {}),
        placement=dict(placement or {}),
        warm_pool=warm_pool
        if isinstance(warm_pool, PoolSettings)
        else PoolSettings(size=warm_pool),
    )
    for t in types:
        try:
            spec.host_spec(t, "settings-check", "settings-check")
        except TypeError as exc:
            raise ConfigError(f"host_settings of {t.name!r}: {exc}") from None
    return spec


def _ask_coordinator(call: Any, what: str) -> Any:
    """``ray.get(call())`` of an idempotent coordinator call, re-sent while Ray restarts the
    coordinator (for up to ``_RESOLVE_DEADLINE_S``). Ends in the reply or a raysource error:
    the coordinator's own (e.g. ``ShardCountChangedError``), else ``ShardingError``."""
    deadline = time.monotonic() + _RESOLVE_DEADLINE_S
    while True:
        try:
            return ray.get(call(), timeout=_ACTIVATE_TIMEOUT_S)
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            if isinstance(cause, RaysourceError):
                raise cause from None
            raise ShardingError(f"{what}: the shard coordinator failed: {cause!r}") from err
        except (RayActorError, GetTimeoutError) as err:  # restarting, or busy
            if time.monotonic() > deadline:
                raise ShardingError(
                    f"{what}: the shard coordinator did not answer within "
                    f"{_RESOLVE_DEADLINE_S:.0f}s ({type(err).__name__})"
                ) from err
            time.sleep(0.2)
        except RayError as err:
            raise ShardingError(f"{what}: {type(err).__name__}: {err}") from err


def unique_system_name(prefix: str = "rs") -> str:
    """A fresh system name (tests, benchmarks, the demo)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"
