"""A warm pool host: a host actor started before anyone needs it, assigned one aggregate later.

Ray never reuses an actor's worker process for a new actor, so every dedicated activation used
to pay a process start (0.5-1 s on a loaded 2-core box: the worker, the imports, the Cassandra
session) before its recovery. A :data:`PooledHostActor` pays that ahead of time: the region of
its node (``raysource.sharding.warm_pool``) starts it, calls :meth:`_PooledHost.warm` (imports
done, the system's stores open) and keeps it idle until an activation takes it. Then
:meth:`_PooledHost.assign` turns it into exactly the host actor that ``HostSpec`` describes
(:class:`~raysource.runtime.actors.host_actor.HostActor`'s whole API and behaviour, the stores
it opened while idle handed over), for the rest of its life:

* **one assignment**: a second ``assign`` of another spec raises ``ConfigError`` (the same
  spec again is a no-op: a re-sent call), so a pooled actor never serves two aggregates, not
  even after its aggregate retired (it exits then, like any dedicated host);
* it keeps its pool name (``<system>:pool:<node id>:<id>``: Ray cannot rename an actor); the
  region's registry maps the aggregate to it, and its ``status()`` tells the region (or a
  restarted one) whether it is idle, serving which actor name, or retired;
* while idle: ``handoff(None)`` (``System.shutdown``) and ``retire_idle()`` close the stores
  and exit; ``ping``/``info``/``status`` answer; any other call is refused with
  ``PassivatedError`` (not applied: nothing was submitted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection
from typing import Any

import ray

from raysource.journal.errors import ConfigError
from raysource.runtime.actors.host_actor import HostSpec, _HostActor
from raysource.runtime.actors.protocol import Call
from raysource.runtime.errors import PassivatedError
from raysource.runtime.logs import configure_from_env
from raysource.runtime.stores import StoreSpec, open_stores

__all__ = ["PooledHostActor", "pooled_actor_options"]

log = logging.getLogger(__name__)


class _PooledHost(_HostActor):
    """See the module docstring (the class behind :data:`PooledHostActor`)."""

    def __init__(self, name: str, store: StoreSpec) -> None:  # noqa: D107 - no super() yet
        configure_from_env()
        self._pool_name = name
        self._pool_store = store
        self._assigned: HostSpec | None = None
        self._preopened: tuple[Any, Any] | None = None
        self._idle_exit = False
        self._pool_created = time.time()

    # ------------------------------------------------------------------ pool surface

    async def warm(self) -> float:
        """Open the system's stores now (so the first activation does not); seconds it took."""
        started = time.perf_counter()
        if self._preopened is None and self._assigned is None:
            self._preopened = await open_stores(self._pool_store)
        return time.perf_counter() - started

    async def assign(self, spec: HostSpec) -> str:
        """Become the host actor of ``spec`` (once; the same spec again is a no-op). Returns the
        actor name it now serves."""
        if self._assigned is not None:
            if self._assigned != spec:
                raise ConfigError(
                    f"{self._pool_name} already serves {self._assigned.actor_name}, "
                    f"not {spec.actor_name}"
                )
            return spec.actor_name
        if self._idle_exit:
            raise PassivatedError(f"{self._pool_name}: leaving the pool; not assigned")
        self._assigned = spec
        _HostActor.__init__(self, spec)
        return spec.actor_name

    async def status(self) -> dict[str, Any]:
        """``{"pool_name", "state": "idle"|"assigned"|"retired", "serves": actor name or
        None, "spec": the HostSpec or None, "pid"}``."""
        spec = self._assigned
        if spec is None:
            state = "retired" if self._idle_exit else "idle"
        else:
            state = "retired" if self._retired is not None else "assigned"
        return {
            "pool_name": self._pool_name,
            "state": state,
            "serves": None if spec is None else spec.actor_name,
            "spec": spec,
            "pid": os.getpid(),
        }

    async def retire_idle(self) -> bool:
        """Leave the pool and exit if still idle (True); False if assigned meanwhile."""
        if self._assigned is not None:
            return False
        self._idle_exit = True
        asyncio.ensure_future(self._exit_idle()).add_done_callback(
            lambda t: t.cancelled() or t.exception()
        )
        return True

    async def _exit_idle(self) -> None:
        if self._preopened is not None:
            journal, snapshots = self._preopened
            self._preopened = None
            for store in (snapshots, journal):
                try:
                    await asyncio.wait_for(store.close(), 0.5)
                except Exception:
                    log.info("closing %r did not finish cleanly", store)
        ray.actor.exit_actor()

    async def _open_stores(self) -> tuple[Any, Any]:
        stores, self._preopened = self._preopened, None
        if stores is not None and self._assigned is not None:
            if self._assigned.store == self._pool_store:
                return stores
            for store in (stores[1], stores[0]):  # another store: not ours to use
                await store.close()
        return await super()._open_stores()

    def _idle_refusal(self) -> PassivatedError:
        return PassivatedError(f"{self._pool_name} is an idle pool host; not applied")

    # ------------------------------------------------------------------ host API, idle-aware

    async def ask(self, command: Any, entity_id: str | None = None) -> Any:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().ask(command, entity_id)

    async def ask_ordered(
        self, entity_id: str | None, caller_id: str, seq: int, command: Any
    ) -> Any:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().ask_ordered(entity_id, caller_id, seq, command)

    async def ask_many(
        self, entity_id: str | None, caller_id: str, first_seq: int, commands: list[Any]
    ) -> list[Any]:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().ask_many(entity_id, caller_id, first_seq, commands)

    async def ask_batches(self, groups: list[Call]) -> list[list[Any] | BaseException]:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().ask_batches(groups)

    async def activate_many(self, entity_ids: list[str]) -> dict[str, BaseException]:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().activate_many(entity_ids)

    async def state(self, entity_id: str | None = None) -> Any:
        if self._assigned is None:
            raise self._idle_refusal()
        return await super().state(entity_id)

    async def passivate(self, entity_id: str | None = None) -> bool:
        if self._assigned is None:
            return False
        return await super().passivate(entity_id)

    async def handoff(self, shards: Collection[int] | None = None) -> int:
        if self._assigned is None:
            if shards is None:
                await self.retire_idle()
            return 0
        return await super().handoff(shards)

    async def info(self) -> dict[str, Any]:
        if self._assigned is None:
            return {
                "name": self._pool_name,
                "placement": None,
                "pool": "idle",
                "pid": os.getpid(),
                "uptime_s": time.time() - self._pool_created,
                **_memory(),
            }
        out = await super().info()
        out["pool_name"] = self._pool_name
        return out

    async def ping(self) -> str:
        if self._assigned is None:
            return "pong"
        return await super().ping()


def _memory() -> dict[str, int]:
    try:
        import psutil

        mem = psutil.Process().memory_full_info()
        return {"rss": mem.rss, "uss": mem.uss}
    except Exception:  # psutil ships with Ray; memory is diagnostics only
        return {}


PooledHostActor = ray.remote(_PooledHost)
"""The Ray actor class of a warm pool host; create with
``PooledHostActor.options(**pooled_actor_options(name, ...)).remote(name, store)``."""


def pooled_actor_options(name: str, namespace: str | None = None, **overrides: Any) -> dict:
    """The options of a pool host: those of a host actor (``host_actor.actor_options``:
    detached, no restarts, pipelining) under its pool ``name``, created fresh (no
    ``get_if_exists``: a pool host is never shared)."""
    opts = {
        "name": name,
        "lifetime": "detached",
        "max_restarts": 0,
        "num_cpus": 0.01,
        "max_concurrency": 1000,
    }
    if namespace is not None:
        opts["namespace"] = namespace
    opts.update(overrides)
    return opts
