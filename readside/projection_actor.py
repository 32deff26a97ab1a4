"""Projections on Ray: one actor per (projection, slice), and the control API.

Each worker of a :class:`~raysource.readside.projections.ProjectionSpec` is a named async Ray actor
``"raysource-projection:<name>:<slice>-of-<n>"`` wrapping a
:class:`~raysource.readside.projections.ProjectionWorker` (its name keeps one live worker per slice,
which the effectively-once view writers rely on). It opens its own Cassandra session in its process.
Actors are created with ``max_restarts=-1``: a crashed or killed worker is re-created by Ray,
re-runs ``__init__``, reads its stored offset and desired state, and resumes by itself.
``stop`` kills it for good (``no_restart``) and returns once Ray has let go of its name; the
stored offset stays.

Lifecycle: a worker that is not detached lives as long as the handles its *creator* holds (Ray
reference counting), and a handle found by name in the creator's own process (``ray.get_actor``,
or ``get_if_exists`` finding the actor) does not count. So the creator's handle of every worker
this process starts is kept in one place (:data:`_CREATED`, for every :class:`Projections` of
the process) from ``start`` until ``stop`` has seen the worker gone; a second ``start`` of a
running projection adopts the worker it finds, and a ``start`` that finds a worker going away
(stopped or killed elsewhere a moment ago) waits until it is gone and creates a new one.
Detached workers (the CLI's) are not reference counted and end only by ``stop``.

Control from Python (every method is a coroutine; the CLI wraps them)::

    control = Projections(config)             # config: the CassandraConfig of journal and views
    await control.start(spec)                 # create workers, global_prepare, run
    await control.pause(name); await control.resume(name)
    await control.reset(spec, offset=None)    # None: from the start (handler.on_reset runs)
    await control.status(name)                # one dict per worker (state, offset, lag, error)
    await control.stop(name)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import RaysourceError
from raysource.readside.errors import ProjectionError
from raysource.readside.offsets import CassandraOffsetStore
from raysource.readside.projections import (
    ProjectionSpec,
    offset_to_str,
    worker_key,
)
from raysource.readside.worker import ProjectionWorker
from raysource.readside.worker_actor import ProjectionActor
from raysource.runtime.actors.cluster import connect_ray, projection_name, projection_prefix

__all__ = ["ProjectionActor", "Projections", "connect_ray"]


# Ray re-creates a crashed worker (max_restarts=-1); control calls wait this long for it
RESTART_WAIT_S = float(os.environ.get("RAYSOURCE_PROJECTION_RESTART_WAIT_S", "30"))

_Method = TypeVar("_Method", bound=Callable[..., Coroutine[Any, Any, Any]])


async def _call(
    handle: Any, method: str, *args: Any, what: str, wait_s: float = RESTART_WAIT_S
) -> Any:
    """``handle.<method>.remote(*args)``, re-sent while Ray restarts the worker (every control
    call is idempotent: start, pause, stop, reset to an offset, status; a repeated ``retry``
    of a stream no longer parked is refused by the worker), for at most ``wait_s``.
    Ends in a reply or a raysource error, never a Ray one: the worker's own raysource error as
    raised there; ``ProjectionError`` for any other failure in the worker, for a worker that
    stayed unavailable, and for one that is gone (stopped, or killed for good)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await getattr(handle, method).remote(*args)
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            if isinstance(cause, RaysourceError):
                raise cause from None
            raise ProjectionError(f"{what}: the worker failed: {cause!r}") from err
        except ActorUnavailableError as err:  # crashed or unreachable, being restarted
            if time.monotonic() > deadline:
                raise ProjectionError(
                    f"{what}: the worker stayed unavailable for {wait_s:.0f}s ({_first_line(err)})"
                ) from err
            await asyncio.sleep(0.2)
        except RayActorError as err:  # ActorDiedError: no restart left (stopped, killed)
            raise _WorkerGone(f"{what}: the worker is gone ({_first_line(err)})") from err
        except RayError as err:  # anything else Ray raises (object lost, system error)
            raise ProjectionError(f"{what}: {_first_line(err)}") from err


class _WorkerGone(ProjectionError):
    """Internal, never raised to a caller (:func:`_public` turns it into a plain
    ``ProjectionError``): the worker actor died for good. ``status`` reports it from the stored
    row, ``stop`` counts it as stopped, ``start`` replaces it."""


def _public(method: _Method) -> _Method:
    """A control method whose failures all reach the caller as public raysource errors: a
    worker gone for good becomes a plain ``ProjectionError`` (its message says so)."""

    @functools.wraps(method)
    async def public(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except _WorkerGone as err:
            raise ProjectionError(str(err)) from err.__cause__

    return public  # type: ignore[return-value]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


# ---------------------------------------------------------------------- worker handles

# The creator's handle of every (not detached) worker this process started, the one place that
# keeps them alive (module docstring), from start until stop saw the worker gone. Keyed by (Ray
# job id, actor name): after a new ray.init (a new job) the old handles are never used again.
_CREATED: dict[tuple[str, str], Any] = {}

# how often stop and start look whether Ray has let go of a stopped worker's name
_GONE_POLL_S = 0.05


def _job() -> str:
    return ray.get_runtime_context().get_job_id()


def _forget(actor: str, handle: Any | None = None) -> None:
    """Drop the kept handle of worker ``actor`` (only if it is ``handle``, when given)."""
    key = (_job(), actor)
    if key in _CREATED and (handle is None or _CREATED[key] is handle):
        del _CREATED[key]


async def _released(actor: str, actor_id: Any, what: str, wait_s: float) -> None:
    """Return once the worker ``actor_id`` no longer holds the name ``actor`` (Ray let go of it,
    or a new worker holds it): only then can a start create the next worker under that name.
    ``ProjectionError`` after ``wait_s``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = await loop.run_in_executor(None, ray.get_actor, actor)
        except ValueError:  # no actor of that name
            return
        if found._actor_id != actor_id:
            return
        if time.monotonic() > deadline:
            raise ProjectionError(
                f"{what}: the stopped worker {actor!r} still held its name after {wait_s:.0f}s"
            )
        await asyncio.sleep(_GONE_POLL_S)


class Projections:
    """Start and control projections on the connected Ray cluster (see module docstring).

    ``detached=True`` makes workers outlive the driver that started them (the CLI does that);
    otherwise they live until ``stop``, or until this process (the driver) ends: the handles
    that keep them are held once per process, not per ``Projections`` object.
    Every failure is a raysource error (``ProjectionError`` unless the worker raised another).
    """

    def __init__(self, config: CassandraConfig, *, detached: bool = False) -> None:
        self.config = config
        self.detached = detached

    # ------------------------------------------------------------------ handles

    def handles(self, name: str) -> dict[str, Any]:
        """worker key -> actor handle of the live workers of projection ``name``."""
        return {key: handle for key, (_, handle) in self._named(name).items()}

    def _named(self, name: str) -> dict[str, tuple[str, Any]]:
        """worker key -> (actor name, handle) of the live workers of projection ``name``."""
        out = {}
        for entry in ray.util.list_named_actors(all_namespaces=False):
            n = entry if isinstance(entry, str) else entry.get("name", "")
            if n.startswith(projection_prefix(name)):
                slice_part = n.rsplit(":", 1)[1]
                i, _, total = slice_part.partition("-of-")
                with _suppress_gone():
                    out[worker_key(int(i), int(total))] = (n, ray.get_actor(n))
        return dict(sorted(out.items()))

    def _handles_or_fail(self, name: str) -> dict[str, Any]:
        handles = self.handles(name)
        if not handles:
            raise ProjectionError(f"projection {name!r} has no running workers")
        return handles

    async def _worker(self, spec: ProjectionSpec, i: int, what: str) -> Any:
        """A live, booted worker of slice ``i``: the running one (adopted), or a new one. A
        worker found going away (stopped or killed for good a moment ago, its name not yet
        let go) is waited out and replaced."""
        actor = projection_name(spec.name, i, spec.n_slices)
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            handle = _CREATED.get((_job(), actor)) or self._create(spec, i, actor)
            left = max(0.0, deadline - time.monotonic())
            if handle is None:  # the name was taken and let go while we looked
                if not left:
                    raise ProjectionError(
                        f"{what}: could not create worker {actor!r} within {RESTART_WAIT_S:.0f}s"
                    )
                await asyncio.sleep(_GONE_POLL_S)
                continue
            try:
                await _call(handle, "ping", what=what, wait_s=left)
                return handle
            except _WorkerGone:
                _forget(actor, handle)
                if not left:
                    raise
                await _released(actor, handle._actor_id, what, left)

    def _create(self, spec: ProjectionSpec, i: int, actor: str) -> Any | None:
        """The worker named ``actor``: created here (its creator's handle is kept) or found
        under that name; None if the name was taken by a worker that went away meanwhile."""
        opts: dict[str, Any] = dict(
            name=actor,
            get_if_exists=True,
            max_restarts=-1,
            max_concurrency=64,
            num_cpus=spec.num_cpus,
        )
        if self.detached:
            opts["lifetime"] = "detached"
        try:
            handle = ProjectionActor.options(**opts).remote(spec, self.config, i)
        except ValueError:  # taken when creating, gone when looked up again
            return None
        except RayError as err:
            raise ProjectionError(
                f"projection {spec.name!r}: could not create worker {actor!r} ({_first_line(err)})"
            ) from err
        if not self.detached:
            _CREATED[(_job(), actor)] = handle
        return handle

    # ------------------------------------------------------------------ control

    @_public
    async def start(self, spec: ProjectionSpec) -> list[dict[str, Any]]:
        """Create the workers (or adopt the running ones), run ``global_prepare`` once, start
        them all. Right after a ``stop`` of the same name it starts new workers."""
        what = f"projection {spec.name!r}"
        handles = await asyncio.gather(*(self._worker(spec, i, what) for i in range(spec.n_slices)))
        await _call(handles[0], "global_prepare", what=what)
        await asyncio.gather(*(_call(h, "start", what=what) for h in handles))
        return await asyncio.gather(*(_call(h, "status", what=what) for h in handles))

    async def _all(self, name: str, method: str, *args: Any) -> None:
        """``method`` on every live worker of projection ``name`` (see :func:`_call`)."""
        what = f"projection {name!r}"
        await asyncio.gather(
            *(
                _call(h, method, *args, what=f"{what} worker {key}")
                for key, h in self._handles_or_fail(name).items()
            )
        )

    @_public
    async def pause(self, name: str) -> None:
        await self._all(name, "pause")

    @_public
    async def resume(self, name: str) -> None:
        await self._all(name, "start")

    @_public
    async def stop(self, name: str) -> None:
        """Stop every worker (offsets stay stored; desired state "stopped") and end them;
        returns once every one of them is gone (a ``start`` then creates new ones)."""
        named = self._named(name)
        if not named:
            raise ProjectionError(f"projection {name!r} has no running workers")
        results = await asyncio.gather(
            *(
                _call(h, "stop", what=f"projection {name!r} worker {key}")
                for key, (_, h) in named.items()
            ),
            return_exceptions=True,
        )
        job, prefix = _job(), projection_prefix(name)
        kept = {a: h for (j, a), h in _CREATED.items() if j == job and a.startswith(prefix)}
        ending = {a: h for a, h in named.values()} | kept
        for h in ending.values():
            with contextlib.suppress(RayError, ValueError):  # already gone
                ray.kill(h, no_restart=True)
        gone = await asyncio.gather(
            *(
                _released(a, h._actor_id, f"projection {name!r}", RESTART_WAIT_S)
                for a, h in ending.items()
            ),
            return_exceptions=True,
        )
        for a in kept:
            _forget(a)
        failed = [
            r
            for r in [*results, *gone]
            if isinstance(r, BaseException) and not isinstance(r, _WorkerGone)
        ]  # a worker already gone is stopped
        if failed:
            raise failed[0]

    @_public
    async def reset(self, spec: ProjectionSpec, offset: TagOffset | None = None) -> None:
        """Reset every worker to ``offset`` (None: the start). Live workers do it themselves
        (and keep running); without workers it runs here, on the stored rows."""
        handles = self.handles(spec.name)
        if handles:
            await self._all(spec.name, "reset", offset_to_str(offset))
            return
        from raysource.journal.cassandra.journal import CassandraJournal

        async with CassandraSession(self.config) as session:
            journal = CassandraJournal(session, self.config)
            for i in range(spec.n_slices):
                worker = ProjectionWorker(spec, i, session, self.config, journal)
                await worker.global_prepare()
                await worker.reset(offset)

    async def status(self, name: str) -> list[dict[str, Any]]:
        """Live workers report themselves; stored rows fill in workers that are not running."""
        handles = self.handles(name)
        answers = await asyncio.gather(  # a restarting worker gets a few seconds, then is
            *(
                _call(h, "status", what=f"projection {name!r} worker {key}", wait_s=5.0)
                for key, h in handles.items()
            ),
            return_exceptions=True,
        )  # reported unavailable
        live: dict[str, Any] = {}
        unavailable: dict[str, str] = {}  # worker -> why (then reported from its stored row)
        for key, answer in zip(handles, answers):
            if isinstance(answer, ProjectionError):
                unavailable[key] = str(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                live[key] = answer
        session = await CassandraSession.open(self.config)
        try:
            store = CassandraOffsetStore(session, self.config.keyspace)
            await store.create()
            rows = await store.list(name)
            parked = await store.parked(name)
        finally:
            await session.close()
        for row in rows:
            if row.worker not in live:
                why = unavailable.get(row.worker)
                live[row.worker] = {
                    "projection": name,
                    "worker": row.worker,
                    "state": f"unavailable: {why}"
                    if why
                    else f"not running (last: {row.state or '-'})",
                    "desired": row.desired,
                    "offset": offset_to_str(row.offset),
                    "error": row.error,
                    "parked": [p.as_dict() for p in parked if p.worker == row.worker],
                }
        for key, why in unavailable.items():
            live.setdefault(
                key, {"projection": name, "worker": key, "state": f"unavailable: {why}"}
            )
        return [live[k] for k in sorted(live)]

    async def parked(self, name: str) -> list[dict[str, Any]]:
        """Every parked aggregate stream of projection ``name`` (from the offset store)."""
        async with CassandraSession(self.config) as session:
            store = CassandraOffsetStore(session, self.config.keyspace)
            await store.create()
            return [p.as_dict() for p in await store.parked(name)]

    @_public
    async def retry(self, name: str, persistence_id: str, *, skip: bool = False) -> dict[str, Any]:
        """Re-apply a parked aggregate stream from its poison event (``skip``: from the event
        after it) in the worker of its slice. ``ProjectionError`` if no worker runs it or the
        aggregate is not parked."""
        handles = self._handles_or_fail(name)
        n = int(next(iter(handles)).split("/")[1])
        from raysource.readside.projections import slice_of

        key = worker_key(slice_of(persistence_id, n), n)
        if key not in handles:
            raise ProjectionError(
                f"projection {name!r}: worker {key} of {persistence_id!r} is not running"
            )
        return await _call(
            handles[key], "retry", persistence_id, skip, what=f"projection {name!r} worker {key}"
        )


class _suppress_gone:
    """Ignore an actor that disappeared between listing and lookup."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, ValueError)
