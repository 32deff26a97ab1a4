"""Timer services: one Ray actor per (system, node) that fires the due durable timers of the
shards homed on its node.

The work is the Ray-free :class:`~raysource.sharding.timer_pump.TimerPump`; this module is its
host. The service

* reads the coordinator's allocation every pass and fires the timers of the shards homed on
  its node — when a node is lost, the coordinator re-homes its shards and the new home's
  service takes their timers over with its next pass (a fire that two services send during
  a move is applied once: see :mod:`raysource.runtime.timers`);
* sends each fire through the normal reference path
  (:class:`~raysource.runtime.actors.refs.EntityRef`, ``ask_many`` per aggregate, idempotency key
  ``timer:<id>``), which activates a passivated aggregate like any command;
* makes sure every live node has a service (get-or-create, every ``_PEERS_EVERY_S``), so a
  node that joined later still gets one.

``System.start`` creates the services (Cassandra stores only: an in-memory store is private to
each process) unless ``timers=None``; ``System.timer_info()`` collects their ``info()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from raysource.runtime.actors.cluster import timer_service_name
from raysource.runtime.actors.ray_metrics import RayMetrics
from raysource.runtime.aggregate import split_persistence_id
from raysource.runtime.stores import open_stores, timer_store_for
from raysource.runtime.timers import TimerFire, fire_key
from raysource.sharding.allocation import NodeId
from raysource.sharding.ray_nodes import get_coordinator, live_nodes, node_affinity
from raysource.sharding.region import SystemSpec
from raysource.sharding.timer_pump import TimerPump, TimerSettings

__all__ = ["TimerService", "get_or_create_timer_service", "timer_service_name"]

log = logging.getLogger(__name__)

_PEERS_EVERY_S = 10.0
_FIRE_TIMEOUT_S = 30.0


class TimerService:
    """The per-node timer service actor (see the module docstring). Its pump runs on its own
    thread and event loop; ``info`` and ``stop`` are answered meanwhile."""

    def __init__(self, spec: SystemSpec, node_id: NodeId, settings: TimerSettings) -> None:
        self.spec = spec
        self.node_id = node_id
        self.settings = settings
        self.pump: TimerPump | None = None
        self.error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="raysource-timers", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except Exception as exc:  # reported by info(); the actor stays to say so
            log.exception("timer service on %s stopped", self.node_id)
            self.error = repr(exc)
            self._ready.set()

    async def _amain(self) -> None:
        from raysource.sharding.system import System  # system.py creates these services

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        journal, snapshots = await open_stores(self.spec.store)
        store = timer_store_for(self.spec.store, journal)
        coordinator = get_coordinator(self.spec.name, namespace=self.spec.namespace)
        system = System(self.spec, coordinator)
        calls = ThreadPoolExecutor(
            self.settings.max_in_flight + 2, thread_name_prefix="raysource-timer-fire"
        )
        loop = self._loop
        peers_at = 0.0

        async def send(type_name: str, pid: str, fires: list[TimerFire]) -> list[Any]:
            aggregate_type = self.spec.type_named(type_name)
            ref = system.entity(aggregate_type, split_persistence_id(pid)[1])
            keys = (
                [fire_key(f.timer_id) for f in fires]
                if aggregate_type.idempotency.enabled
                else None
            )
            return await loop.run_in_executor(
                calls, lambda: ref.ask_many(fires, timeout=_FIRE_TIMEOUT_S, idempotency_keys=keys)
            )

        def read_allocation() -> list[tuple[str, int]]:
            nonlocal peers_at
            if time.monotonic() >= peers_at:
                peers_at = time.monotonic() + _PEERS_EVERY_S
                for node in live_nodes():
                    if node != self.node_id:
                        get_or_create_timer_service(self.spec, node, self.settings)
            table = ray.get(coordinator.allocation.remote(), timeout=15)
            return [(s.type_name, s.shard) for s in table.get(self.node_id, ())]

        async def owned() -> list[tuple[str, int]]:
            return await loop.run_in_executor(calls, read_allocation)

        self.pump = TimerPump(store, send, owned, self.settings, metrics=RayMetrics())
        self._ready.set()
        try:
            await self.pump.run(self._stop)
        finally:
            calls.shutdown(wait=False)
            await journal.close()
            await snapshots.close()

    def info(self) -> dict[str, Any]:
        """The pump's figures (:meth:`TimerPump.info`) and this node's id."""
        base = {"node": self.node_id, "error": self.error}
        return {**base, **(self.pump.info() if self.pump is not None else {})}

    def wall_clock(self) -> tuple[str, float]:
        """(this node's id, its wall clock): ``raysource doctor``'s clock-skew check."""
        return self.node_id, time.time()

    def stop(self) -> None:
        """Finish the fires in flight and end the pump."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=_FIRE_TIMEOUT_S)


_TimerServiceActor = ray.remote(TimerService)


def get_or_create_timer_service(
    spec: SystemSpec, node_id: NodeId, settings: TimerSettings | None = None
) -> Any:
    """The timer service of ``node_id`` (created, pinned to that node, if missing)."""
    options: dict[str, Any] = {
        "name": timer_service_name(spec.name, node_id),
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": 0,  # pinned to its node; re-created by a peer or System.start
        "max_concurrency": 4,
        **node_affinity(node_id),
    }
    if spec.namespace is not None:
        options["namespace"] = spec.namespace
    return _TimerServiceActor.options(**options).remote(spec, node_id, settings or TimerSettings())
