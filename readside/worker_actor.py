"""The projection worker's Ray actor: one process per (projection, slice), wrapping a
:class:`~raysource.readside.worker.ProjectionWorker` with its own Cassandra session, offset
store and metrics. Created, adopted and stopped by
:class:`~raysource.readside.projection_actor.Projections` (the control API), never directly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from typing import Any

import ray

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import CassandraSession
from raysource.readside.projections import (
    ProjectionSpec,
    offset_from_str,
)
from raysource.readside.worker import ProjectionWorker
from raysource.runtime.actors.cluster import projection_name
from raysource.runtime.actors.ray_metrics import RayMetrics
from raysource.runtime.logs import configure_from_env

__all__ = ["LAG_REFRESH_S", "ProjectionActor"]

# How often a running worker refreshes its lag gauges on its own (status() refreshes them too).
# Each refresh scans the tag from the offset (bounded by lag_scan_limit): keep it coarse.
LAG_REFRESH_S = float(os.environ.get("RAYSOURCE_PROJECTION_LAG_REFRESH_S", "30"))


def _freeze_heap() -> None:
    """Put what the worker's process built until now out of the cyclic GC's reach (once, at
    boot; the process is the worker's own).

    By then the process holds Ray's objects and the Cassandra driver's schema metadata (every
    keyspace of the cluster: tens of thousands of objects), none of it garbage. Each full
    collection walked all of it: measured in one process (issue 30), 150-500 ms pauses, a few
    per 20,000 events caught up, about a third of the worker's CPU in the effectively-once
    view's catch-up (which allocates more per event than a no-op handler, so collects more
    often); a pause that long also holds up the live path. Frozen objects are never collected:
    what boot built and later drops in a cycle stays (driver metadata of a keyspace that existed
    at boot and changes later), and so do boot's own cyclic leftovers (no collection first: it
    would add a full pause to every start, while freezing is constant time).
    """
    gc.freeze()


class _ProjectionActor:
    """The Ray actor around one :class:`ProjectionWorker`. Offsets cross the boundary as
    strings (:func:`offset_to_str`)."""

    def __init__(self, spec: ProjectionSpec, config: CassandraConfig, slice_index: int) -> None:
        configure_from_env()
        self.spec, self.config, self.slice_index = spec, config, slice_index
        self._worker: ProjectionWorker | None = None
        self._peers: dict[int, Any] = {}  # slice -> actor handle (the reader's followers)
        self._metrics = RayMetrics()  # lag gauges, exported by Ray
        self._lag_task: asyncio.Task[None] | None = None
        self._lag_refreshes = 0
        # async actor: __init__ runs on the actor's loop, so booting can start right away
        # (and does again after a Ray restart, resuming a worker whose desired state is running)
        self._booting = asyncio.get_running_loop().create_task(self._boot())

    async def _boot(self) -> None:
        from raysource.journal.cassandra.journal import CassandraJournal

        session = await CassandraSession.open(self.config)
        journal = CassandraJournal(session, self.config)
        worker = ProjectionWorker(
            self.spec, self.slice_index, session, self.config, journal, metrics=self._metrics
        )
        if self.spec.n_slices > 1:  # one read of the tag: slice 0 feeds the others
            if self.slice_index == 0:
                worker.lead(self._feed)
            else:
                worker.follow()
        await worker.boot()
        self._worker = worker
        _freeze_heap()
        if LAG_REFRESH_S > 0:
            self._lag_task = asyncio.get_running_loop().create_task(self._refresh_lag(worker))

    async def _refresh_lag(self, worker: ProjectionWorker) -> None:
        while True:
            await asyncio.sleep(LAG_REFRESH_S)
            if worker.state not in ("running", "parked"):
                continue
            with contextlib.suppress(Exception):  # diagnostics only; status() shows errors
                await worker.status()  # records the lag gauges
                self._lag_refreshes += 1

    def lag_refresh(self) -> dict[str, Any]:
        """The lag refresher: its period (``RAYSOURCE_PROJECTION_LAG_REFRESH_S``; 0: off),
        whether it runs, and how many refreshes it made."""
        task = self._lag_task
        return {
            "period_s": LAG_REFRESH_S,
            "running": task is not None and not task.done(),
            "refreshes": self._lag_refreshes,
        }

    async def _w(self) -> ProjectionWorker:
        await asyncio.shield(self._booting)
        assert self._worker is not None
        return self._worker

    async def global_prepare(self) -> None:
        await (await self._w()).global_prepare()

    async def start(self) -> None:
        await (await self._w()).start()

    async def pause(self) -> None:
        await (await self._w()).pause()

    async def stop(self) -> None:
        await (await self._w()).stop()

    async def reset(self, offset: str) -> None:
        await (await self._w()).reset(offset_from_str(offset))

    async def status(self) -> dict[str, Any]:
        return await (await self._w()).status()

    async def ping(self) -> str:
        await self._w()
        return "pong"

    # the live path (raysource.runtime.actors.live offers events after their append)

    def subscription(self) -> tuple[str, int, int, bool]:
        """(tag, slice, n_slices, live): what a live publisher sends here."""
        return (self.spec.tag, self.slice_index, self.spec.n_slices, self.spec.settings.live)

    def offer(self, events: list) -> None:
        """Acknowledged events of this worker's tag (best effort; dropped while booting)."""
        if self._worker is not None:
            self._worker.offer(events)

    async def retry(self, persistence_id: str, skip: bool = False) -> dict[str, Any]:
        return await (await self._w()).retry(persistence_id, skip=skip)

    # slices (raysource.readside.slices): slice 0 reads the tag and feeds the others

    async def feed(self, events: list, from_offset: Any, up_to: Any) -> Any:
        return await (await self._w()).feed(events, from_offset, up_to)

    async def _feed(self, k: int, events: list, from_offset: Any, up_to: Any) -> Any:
        handle = self._peers.get(k)
        if handle is None:
            name = projection_name(self.spec.name, k, self.spec.n_slices)
            handle = self._peers[k] = await asyncio.get_running_loop().run_in_executor(
                None, ray.get_actor, name
            )
        try:
            return await handle.feed.remote(events, from_offset, up_to)
        except Exception:
            self._peers.pop(k, None)  # found again (maybe re-created) on the next feed
            raise


ProjectionActor = ray.remote(_ProjectionActor)
