"""Deploy a projection version beside the live one: bulk backfill with Ray Data, then follow.

:func:`deploy` (``raysource projection deploy NAME --version 2``):

1. records the version (``backfilling``) and runs its handler's ``global_prepare`` (its tables);
2. fixes a cut (:func:`~raysource.data.source.stable_cut`) and fills the view with every event
   of the tag up to it: :func:`~raysource.data.source.read_events` (the cut read once, split
   into one read task per slice) written by :func:`~raysource.data.sink.write_view`,
   ``workers`` tasks at a time (a task that dies is retried; the view's watermarks make the
   retry apply only what is missing);
3. stores every worker's offset at the cut and starts the version's workers: they read the tag
   strictly after the cut (and the live path), so the bulk part and the live part meet without
   gap; the one overlap, a tag row the journal re-wrote, is applied once by the view;
4. records the version ``following``. Readers keep reading the live version until
   ``projection switch`` (:mod:`raysource.readside.versions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from raysource.data.sink import ProjectionView, write_view
from raysource.data.source import read_events, stable_cut
from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import CassandraSession
from raysource.readside.errors import ProjectionError
from raysource.readside.offsets import CassandraOffsetStore
from raysource.readside.projections import ProjectionSpec, offset_to_str
from raysource.readside.versions import SpecBuilder, VersionRegistry, build_version

__all__ = ["Backfill", "backfill", "deploy"]


@dataclass(frozen=True)
class Backfill:
    """What a backfill did: events written up to ``cut`` by ``tasks`` read/write tasks."""

    projection: str
    cut: TagOffset
    events: int
    tasks: int
    seconds: float

    def line(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.projection}: backfilled {self.events} events up to {offset_to_str(self.cut)} "
            f"with {self.tasks} Ray Data task(s) in {self.seconds:.1f} s ({rate:.0f} events/s)"
        )


async def backfill(
    spec: ProjectionSpec,
    config: CassandraConfig,
    *,
    workers: int = 2,
    tasks: int | None = None,
    cut: TagOffset | None = None,
) -> Backfill:
    """Fill ``spec``'s view with the tag's events up to ``cut`` (default: the stable cut now)
    with Ray Data (``tasks`` read/write tasks, one per slice of the split, default
    ``2 * workers``; at most ``workers`` at once). Does not touch the offsets."""
    if workers < 1:
        raise ProjectionError("backfill needs workers >= 1")
    cut = cut or stable_cut(config)
    n = tasks or 2 * workers
    started = time.monotonic()
    ds = read_events(
        config, spec.tag, spec.aggregate_types, until=cut, slices=n, concurrency=workers
    )
    view = ProjectionView(spec, config)
    write_view(ds, view, concurrency=workers)
    written = sum(int(r) for r in view.write_returns)
    return Backfill(spec.name, cut, written, n, time.monotonic() - started)


async def deploy(
    config: CassandraConfig,
    base: str,
    version: int,
    build: SpecBuilder,
    *,
    workers: int = 2,
    tasks: int | None = None,
    detached: bool = False,
) -> Backfill:
    """Deploy version ``version`` of projection ``base`` (see the module docstring)."""
    from raysource.readside.projection_actor import Projections

    spec = build_version(build, base, version)
    control = Projections(config, detached=detached)
    if control.handles(spec.name):
        raise ProjectionError(
            f"projection {base!r} version {version} is already deployed ({spec.name!r} runs); "
            f"drop it first (`raysource projection drop {base} --version {version}`)"
        )
    async with CassandraSession(config) as session:
        registry = VersionRegistry(session, config.keyspace)
        await registry.create()
        if (await registry.alias(base)).live == version:
            raise ProjectionError(f"projection {base!r}: version {version} is live already")
        store = CassandraOffsetStore(session, config.keyspace)
        await store.create()
        await spec.handler_factory(session, config).global_prepare()
        cut = stable_cut(config)
        await registry.record(base, version, "backfilling", cut)
    done = await backfill(spec, config, workers=workers, tasks=tasks, cut=cut)
    async with CassandraSession(config) as session:
        store = CassandraOffsetStore(session, config.keyspace)
        for key in spec.worker_keys():
            await store.save_offset(spec.name, key, cut)
            await store.set_desired(spec.name, key, "running")
        await control.start(spec)
        await VersionRegistry(session, config.keyspace).set_state(base, version, "following")
    return done
