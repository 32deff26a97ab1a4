"""``LocalResolver``: a test double of the sharding layer's resolver.

It creates the named host actors on the local Ray cluster directly (no coordinator, no node
affinity), so the Ray host actor and references can be tested and benchmarked without the
sharding layer. Production code resolves through :class:`raysource.sharding.system.System`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ray

from raysource.runtime.actors.host_actor import HostActor, HostSpec, actor_options
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec

__all__ = ["LocalResolver"]


class LocalResolver:
    """Get-or-create named :data:`~raysource.runtime.actors.host_actor.HostActor` actors on the
    local Ray cluster.

    Placement per type: ``aggregate_type.placement`` unless ``placement`` overrides it per
    type name. ``host_settings`` (per type name) become :class:`HostSpec` fields, e.g.
    ``{"show": {"idle_timeout_s": 5, "max_active": 100}}``. ``shard_of(entity_id, n)`` routes
    hosted entities (default: :func:`raysource.runtime.shard_id.shard_of`).
    """

    def __init__(
        self,
        system: str,
        store: StoreSpec,
        *,
        namespace: str | None = None,
        placement: dict[str, str] | None = None,
        host_settings: dict[str, dict[str, Any]] | None = None,
        shard_of: Callable[[str, int], int] | None = None,
    ) -> None:
        self.system = system
        self.store = store
        self.namespace = namespace
        self.placement = dict(placement or {})
        self.host_settings = dict(host_settings or {})
        self._shard_of = shard_of
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    def spec_for(self, aggregate_type: AggregateType, entity_id: str) -> HostSpec:
        placement = self.placement.get(aggregate_type.name, aggregate_type.placement)
        settings = self.host_settings.get(aggregate_type.name, {})
        if placement == "dedicated":
            return HostSpec(
                self.system,
                aggregate_type,
                self.store,
                "dedicated",
                entity_id=entity_id,
                **settings,
            )
        return HostSpec(
            self.system,
            aggregate_type,
            self.store,
            "hosted",
            shard=self._shard(aggregate_type, entity_id),
            **settings,
        )

    def _shard(self, aggregate_type: AggregateType, entity_id: str) -> int:
        if self._shard_of is None:
            self._shard_of = shard_of
        return self._shard_of(entity_id, aggregate_type.number_of_shards)

    def _key(self, spec: HostSpec) -> str:
        return spec.actor_name

    def resolve(self, aggregate_type: AggregateType, entity_id: str) -> Any:
        aggregate_type.persistence_id(entity_id)  # validate before touching Ray
        spec = self.spec_for(aggregate_type, entity_id)
        key = self._key(spec)
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = HostActor.options(**actor_options(spec, self.namespace)).remote(spec)
                self._handles[key] = handle
            return handle

    def invalidate(self, aggregate_type: AggregateType, entity_id: str, handle: Any = None) -> None:
        key = self._key(self.spec_for(aggregate_type, entity_id))
        with self._lock:
            if handle is None or self._handles.get(key) is handle:
                self._handles.pop(key, None)

    def handles(self) -> list[Any]:
        """Every handle this resolver created or looked up (for shutdown in tests)."""
        with self._lock:
            return list(self._handles.values())

    def kill_all(self) -> None:
        """``ray.kill`` every cached host actor (tests, benchmarks) and forget them."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            try:
                ray.kill(h)
            except Exception:
                pass
