"""The warm pool of one node: pre-started idle host actors its region assigns to activations.

A dedicated activation used to create its host actor, and Ray starts a fresh worker process for
every actor (0.5-1 s here: the process, the imports, the Cassandra session) before the
aggregate's recovery even begins. With ``System.start(..., warm_pool=N)`` each node's region
keeps ``N`` :data:`~raysource.runtime.actors.pooled_host.PooledHostActor` processes started,
their stores open, idle; an activation takes one (one actor call, ``assign``) instead of
creating one, and the pool starts a replacement in the background.

What the pool promises (tests/sharding/test_warm_pool_ray.py breaks each):

* **Bounded**: at most ``size`` idle hosts plus the ones being started to replace taken or dead
  ones (never more than ``size`` in all, at most ``max_starting`` starting at once); each is
  one Python worker process (its memory: ``benchmarks/pool_bench.py`` reports RSS and USS).
* **One assignment per host**, recorded in :class:`WarmPool`'s registry (actor name of the
  aggregate -> the pool host serving it): an idle host is removed from the idle list before the
  ``assign`` call is sent, and the host itself refuses a second, different assignment. A host
  whose ``assign`` does not answer in time is killed, never left half-assigned.
* **One live activation per aggregate, as with names**: the registry is consulted before any
  assignment; an activation the region let go (passivated, evicted, handed off, found dead by a
  reference) stays in the registry as *retiring* until its process has exited, and the next
  activation of that aggregate waits for that (as Ray's named-actor registry made it wait for
  the old name to be freed), or takes the old host back if it turns out to be still serving.
  A restarted region rebuilds the registry from its node's pool hosts (``adopt``) before it
  assigns anything; a host that does not answer it within 30 s is killed (it might serve an
  aggregate the registry cannot name).
* **A host dying while idle** is dropped (a liveness check every ``check_interval_s``, or its
  failed ``assign``) and replaced; **dying while assigned** is a host death like any other:
  references see ``RayActorError``, re-resolve, and the region's next activation (after the
  dead host left the registry) takes a fresh one.

The region (``raysource.sharding.region``) adds the placement side: it assigns only for shards
whose home is its node (asked of the coordinator per activation) and counts its handoffs per
shard, so an assignment that a handoff overtook is stopped and refused rather than left on the
wrong node.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from raysource.journal.errors import ConfigError
from raysource.runtime.actors.cluster import pool_host_name
from raysource.runtime.actors.host_actor import HostSpec
from raysource.runtime.actors.pooled_host import PooledHostActor, pooled_actor_options
from raysource.runtime.errors import PassivatedError
from raysource.runtime.stores import StoreSpec
from raysource.sharding.ray_nodes import named_actors

__all__ = ["PoolSettings", "PoolStats", "WarmPool"]

log = logging.getLogger(__name__)

_SWEEP = 256  # retiring hosts checked per liveness round


@dataclass(frozen=True)
class PoolSettings:
    """``size``: idle host actors kept per node (0: no pool). ``check_interval_s``: how often
    idle hosts are checked alive. ``assign_timeout_s``: an ``assign`` slower than this kills
    the host (it is never left half-assigned). ``retire_wait_s``: how long an activation waits
    for the previous activation of its aggregate to exit before it is refused (not applied).
    ``max_starting``: hosts started at once (a process start is one to two CPU seconds of
    imports: refilling one at a time leaves the other cores to the activations that just
    took hosts)."""

    size: int = 0
    check_interval_s: float = 1.0
    assign_timeout_s: float = 10.0
    retire_wait_s: float = 15.0
    max_starting: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ConfigError(f"warm_pool must be an int >= 0, got {self.size!r}")
        if min(self.check_interval_s, self.assign_timeout_s, self.retire_wait_s) <= 0 or (
            self.max_starting < 1
        ):
            raise ConfigError(f"invalid warm pool settings {self!r}")


@dataclass
class PoolStats:
    """Counters of one node's pool (``ShardRegion.info()["pool"]``)."""

    created: int = 0  # pool hosts started (first fill and replacements)
    warm_failures: int = 0  # starts that failed (the pool retries after a pause)
    taken: int = 0  # activations served by a pool host
    misses: int = 0  # activations that found the pool empty (the region created an actor)
    dead_idle: int = 0  # idle hosts found dead (liveness check or failed assign), replaced
    killed_on_assign: int = 0  # assigns that timed out: the host was killed
    adopted: int = 0  # hosts found by a restarted region
    killed_unanswering: int = 0  # hosts a restarted region could not ask (killed, not adopted)
    retired_idle: int = 0  # idle hosts sent away (pool closed)


class WarmPool:
    """One node's pool and assignment registry; lives in the region actor's event loop."""

    def __init__(
        self,
        system: str,
        namespace: str | None,
        node_id: str,
        store: StoreSpec,
        settings: PoolSettings,
        actor_overrides: dict[str, Any],
    ) -> None:
        self.system = system
        self.namespace = namespace
        self.node_id = node_id
        self.store = store
        self.settings = settings
        self._overrides = actor_overrides
        self.stats = PoolStats()
        self._idle: collections.deque[tuple[str, Any]] = collections.deque()
        self._starting = 0
        self.assigned: dict[str, Any] = {}  # aggregate's actor name -> pool host serving it
        self.retiring: dict[str, Any] = {}  # let go, process maybe not exited yet
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._adopted: asyncio.Future[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def ready(self) -> None:
        """Rebuild the registry from this node's pool hosts (once), then keep the pool full."""
        if self._adopted is None:
            self._adopted = asyncio.ensure_future(self._adopt())
        await asyncio.shield(self._adopted)
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())

    async def _adopt(self) -> None:
        loop = asyncio.get_running_loop()
        prefix = pool_host_name(self.system, self.node_id, "")
        names = await loop.run_in_executor(None, named_actors, self.namespace, prefix)
        for name, namespace in names:
            try:
                handle = await loop.run_in_executor(
                    None, functools.partial(ray.get_actor, name, namespace=namespace)
                )
                status: dict[str, Any] = await asyncio.wait_for(handle.status.remote(), 30.0)
            except TimeoutError:  # alive but silent: it may serve an aggregate we cannot name
                log.warning("pool host %s does not answer: killing it", name)
                self.stats.killed_unanswering += 1
                await _kill(handle)
                continue
            except Exception as exc:  # exited meanwhile: nothing to adopt
                log.info("pool host %s not adopted: %r", name, exc)
                continue
            self.stats.adopted += 1
            serves = status["serves"]
            if status["state"] == "idle":
                self._idle.append((name, handle))
            elif status["state"] == "assigned" and serves not in self.assigned:
                self.assigned[serves] = handle
            elif serves is not None:
                self.retiring.setdefault(serves, handle)

    async def _run(self) -> None:
        while not self._closed:
            missing = min(
                self.settings.size - len(self._idle) - self._starting,
                self.settings.max_starting - self._starting,
            )
            for _ in range(max(missing, 0)):
                self._starting += 1
                asyncio.ensure_future(self._start_one())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.check_interval_s)
            except TimeoutError:
                await asyncio.gather(self._check_idle(), self._sweep_retiring())

    async def _start_one(self) -> None:
        name = pool_host_name(self.system, self.node_id, uuid.uuid4().hex[:12])
        opts = pooled_actor_options(name, self.namespace, **self._overrides)
        loop = asyncio.get_running_loop()
        handle: Any
        try:
            handle = await loop.run_in_executor(
                None, lambda: PooledHostActor.options(**opts).remote(name, self.store)
            )
            self.stats.created += 1
            await handle.warm.remote()
        except Exception as exc:
            self.stats.warm_failures += 1
            log.warning("starting pool host %s failed: %r", name, exc)
            await asyncio.sleep(self.settings.check_interval_s)  # no tight loop on a bad store
        else:
            if self._closed:
                await _quietly(handle.retire_idle.remote())
            else:
                self._idle.append((name, handle))
        finally:
            self._starting -= 1
            self._wake.set()

    async def _check_idle(self) -> None:
        hosts = list(self._idle)
        if not hosts:
            return
        alive = await asyncio.gather(*(_answers(h.status.remote()) for _, h in hosts))
        for (name, handle), ok in zip(hosts, alive):
            if not ok and (name, handle) in self._idle:
                self._idle.remove((name, handle))
                self.stats.dead_idle += 1
                log.info("idle pool host %s died: replacing it", name)
                self._wake.set()

    async def _sweep_retiring(self) -> None:
        """Forget let-go hosts whose process has exited (the registry stays bounded by the
        activations alive, not by every aggregate ever activated here)."""
        some = list(self.retiring.items())[:_SWEEP]
        if not some:
            return
        alive = await asyncio.gather(*(_answers(h.status.remote()) for _, h in some))
        for (name, handle), ok in zip(some, alive):
            if not ok and self.retiring.get(name) is handle:
                del self.retiring[name]

    async def close(self) -> int:
        """Stop refilling and send the idle hosts away; returns how many."""
        self._closed = True
        self._wake.set()
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(_quietly(h.retire_idle.remote()) for _, h in idle))
        self.stats.retired_idle += len(idle)
        return len(idle)

    # ------------------------------------------------------------------ assignments

    async def take(self, spec: HostSpec) -> Any | None:
        """An idle host, assigned to ``spec`` and registered; None if the pool is empty."""
        while self._idle:
            name, handle = self._idle.popleft()
            self._wake.set()  # start its replacement now
            try:
                await asyncio.wait_for(handle.assign.remote(spec), self.settings.assign_timeout_s)
            except TimeoutError:
                self.stats.killed_on_assign += 1
                await _kill(handle)
                continue
            except RayActorError:
                self.stats.dead_idle += 1
                continue
            except Exception as exc:  # e.g. it was leaving the pool: take the next one
                log.info("pool host %s refused %s: %r", name, spec.actor_name, exc)
                continue
            self.stats.taken += 1
            self.assigned[spec.actor_name] = handle
            return handle
        self.stats.misses += 1
        return None

    def release(self, actor_name: str) -> None:
        """The region let the activation ``actor_name`` go (it is stopping, stopped or dead):
        it stays registered as retiring until its process is gone (:meth:`previous`)."""
        handle = self.assigned.pop(actor_name, None)
        if handle is not None:
            self.retiring[actor_name] = handle

    async def previous(self, actor_name: str) -> Any | None:
        """Wait until the previous pool host of ``actor_name`` has exited (None), or return
        it if it is still serving (not retired). ``PassivatedError`` (not applied) if it
        still runs after ``retire_wait_s``."""
        handle = self.assigned.get(actor_name)
        if handle is not None:
            return handle
        handle = self.retiring.get(actor_name)
        deadline = time.monotonic() + self.settings.retire_wait_s
        while handle is not None:
            try:
                status = await asyncio.wait_for(handle.status.remote(), 5.0)
            except RayActorError:
                break  # exited: the aggregate is free
            except TimeoutError:
                status = {"state": "busy"}
            if status["state"] == "assigned":  # never stopped: serve on with it
                if self.retiring.get(actor_name) is handle:
                    del self.retiring[actor_name]
                self.assigned[actor_name] = handle
                return handle
            if time.monotonic() > deadline:
                raise PassivatedError(
                    f"{actor_name}: the previous activation is still stopping; not applied"
                )
            await asyncio.sleep(0.05)
        if handle is not None and self.retiring.get(actor_name) is handle:
            del self.retiring[actor_name]
        return None

    def info(self) -> dict[str, Any]:
        return {
            "size": self.settings.size,
            "idle": len(self._idle),
            "starting": self._starting,
            "assigned": len(self.assigned),
            "retiring": len(self.retiring),
            "idle_names": [n for n, _ in self._idle],
            **asdict(self.stats),
        }


async def _answers(ref: Any) -> bool:
    """False only if the actor is dead (a slow answer is still alive)."""
    try:
        await asyncio.wait_for(ref, 10.0)
    except RayActorError:
        return False
    except Exception:
        return True
    return True


async def _quietly(ref: Any) -> None:
    try:
        await asyncio.wait_for(ref, 10.0)
    except Exception as exc:
        log.debug("pool host call failed: %r", exc)


async def _kill(handle: Any) -> None:
    try:
        ray.kill(handle)
    except Exception as exc:
        log.debug("killing a pool host: %r", exc)
