"""Projection lifecycle on real Ray and a real Cassandra: a projection stopped and started again
under the same name always ends with exactly one live worker, in both ownership modes, and every
failure of the control API is a public raysource error.

Ownership modes: *owned* (``Projections(config)``, the API: a worker lives as long as its
creator's handle) and *detached* (the CLI's ``raysource projection start|stop``, run in this
process: workers outlive the CLI). Issue 30: the second ``start`` of a name replaced the kept
creator handle by one found by name, which does not keep a worker alive, so Ray's reference
counting ended the worker and the private ``_WorkerGone`` reached the caller.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import cloudpickle
import pytest
import ray
import ray.cloudpickle as ray_cloudpickle
from ray.exceptions import RayActorError

import raysource.errors
from raysource.errors import ProjectionError, RaysourceError
from raysource.examples.ledger import LEDGER
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionHandler, ProjectionSettings, ProjectionSpec

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROUNDS = 50
CLI_ROUNDS = 5  # each CLI command opens its own Cassandra session: ~2 s a round
SETTINGS = ProjectionSettings(poll_interval=0.2, commit_interval=0.2, lag_scan_limit=1)


class Quiet(ProjectionHandler):
    def handle(self, envelope) -> None:
        return None


def quiet(session, config) -> Quiet:
    return Quiet()


# the CLI loads its spec by reference: --spec test_projections_lifecycle:CLI_SPEC
CLI_SPEC = ProjectionSpec(
    f"lifecli{uuid.uuid4().hex[:6]}", "lifecycle-cli", quiet, (LEDGER,), 1, SETTINGS
)


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)


@pytest.fixture(scope="module")
def schema(config) -> None:
    async def create() -> None:
        journal = await CassandraJournal.connect(config, create_schema=True)
        await journal.close()

    asyncio.run(create())


def assert_public(exc: BaseException, what: str) -> None:
    """A raysource error whose class is public: importable from ``raysource.errors``."""
    assert isinstance(exc, RaysourceError), f"{what}: untyped {exc!r}"
    name = type(exc).__name__
    assert getattr(raysource.errors, name, None) is type(exc), (
        f"{what}: {type(exc).__module__}.{name} is not a public raysource error: {exc}"
    )


def only_worker(control: Projections, name: str):
    """The one live worker of ``name`` (exactly one is listed under the projection's names)."""
    handles = control.handles(name)
    assert list(handles) == ["0/1"], handles
    return handles["0/1"]


async def assert_dead(handle, what: str) -> None:
    """The worker behind ``handle`` is gone for good (a call on it fails as dead)."""
    with pytest.raises(RayActorError, match="(?s)."):
        await asyncio.wait_for(handle.status.remote(), 60)


async def cycle(control: Projections, spec: ProjectionSpec, rounds: int) -> None:
    """start -> stop of ``spec``, ``rounds`` times: each start leaves exactly one live worker,
    a new one, answering status; each stop leaves none listed and the stopped worker dead."""
    mode = "detached" if control.detached else "owned"
    seen = set()
    for round_ in range(rounds):
        what = f"{mode}, round {round_}"
        statuses = await control.start(spec)
        assert [s["state"] for s in statuses] == ["running"], (what, statuses)
        worker = only_worker(control, spec.name)
        assert (await worker.status.remote())["state"] == "running", what
        assert worker._actor_id not in seen, f"{what}: not a new worker"
        seen.add(worker._actor_id)
        await control.stop(spec.name)
        assert control.handles(spec.name) == {}, what
        await assert_dead(worker, what)


@pytest.mark.timeout(900)  # 100 worker processes started: ~0.7-1.5 s each, more on busy cores
async def test_start_stop_start_same_name_both_modes(config, schema, ray_local) -> None:
    """start -> stop -> start of one name, ROUNDS times in a row, by the API (owned workers),
    and at the same time under another name detached, as the CLI runs it (the CLI itself: a
    test below). Every call succeeds: no error of any type.

    Both modes run at once: nearly all of a round is the new worker's process start (measured:
    ~0.85 CPU-s in that one process, ~0.1 in the raylet, GCS and this driver together), so one
    sequence keeps about one core busy and two overlap on a 2-core box; they also check that
    the lifecycles of two projections of one process do not disturb each other."""
    specs = [
        ProjectionSpec(
            f"life{mode}{uuid.uuid4().hex[:6]}", f"lifecycle-{mode}", quiet, (LEDGER,), 1, SETTINGS
        )
        for mode in ("own", "det")
    ]
    controls = [Projections(config), Projections(config, detached=True)]
    try:
        await asyncio.gather(*(cycle(c, s, ROUNDS) for c, s in zip(controls, specs)))
    finally:
        for c, s in zip(controls, specs):
            for h in c.handles(s.name).values():
                ray.kill(h, no_restart=True)


async def test_second_start_adopts_the_running_worker(config, schema, ray_local) -> None:
    """A start of a running projection (owned) keeps its worker: the same one, still alive
    after Ray had time to act on the handles (the defect: it died, and ``_WorkerGone``
    escaped from start). Two Projections objects of one process share the kept handles."""
    spec = ProjectionSpec(
        f"lifetwice{uuid.uuid4().hex[:6]}", "lifecycle-twice", quiet, (LEDGER,), 1, SETTINGS
    )
    first, second = Projections(config), Projections(config)
    try:
        await first.start(spec)
        worker = only_worker(first, spec.name)
        for control in (first, second, first):
            statuses = await control.start(spec)
            assert [s["state"] for s in statuses] == ["running"]
        del second
        for _ in range(20):  # a worker dropped by reference counting dies within this
            assert (await worker.status.remote())["state"] == "running"
            assert only_worker(first, spec.name)._actor_id == worker._actor_id
            await asyncio.sleep(0.1)
        await first.stop(spec.name)
        await assert_dead(worker, "stopped")
    finally:
        for h in first.handles(spec.name).values():
            ray.kill(h, no_restart=True)


async def test_control_errors_are_public(config, schema, ray_local) -> None:
    """Every failure of the control API is a public raysource error: calls on a stopped
    projection, on a worker killed for good behind the API's back, and a start right after
    that kill (which replaces the worker)."""
    control = Projections(config)
    spec = ProjectionSpec(
        f"lifeerr{uuid.uuid4().hex[:6]}", "lifecycle-err", quiet, (LEDGER,), 1, SETTINGS
    )
    try:
        await control.start(spec)
        await control.stop(spec.name)
        for what, call in (
            ("pause", control.pause(spec.name)),
            ("resume", control.resume(spec.name)),
            ("stop", control.stop(spec.name)),
            ("retry", control.retry(spec.name, "ledger|nobody")),
        ):
            with pytest.raises(ProjectionError) as caught:
                await call
            assert_public(caught.value, what)
        for _ in range(3):
            await control.start(spec)
            worker = only_worker(control, spec.name)
            ray.kill(worker, no_restart=True)  # for good, not through the API
            outcomes = await asyncio.gather(
                control.pause(spec.name),
                control.resume(spec.name),
                control.retry(spec.name, "ledger|nobody"),
                return_exceptions=True,
            )
            for what, outcome in zip(("pause", "resume", "retry"), outcomes):
                if isinstance(outcome, BaseException):
                    assert_public(outcome, what)
            statuses = await control.start(spec)  # right after the kill: a new worker
            assert [s["state"] for s in statuses] == ["running"]
            assert only_worker(control, spec.name)._actor_id != worker._actor_id
            await control.stop(spec.name)
            await assert_dead(worker, "killed")
    finally:
        for h in control.handles(spec.name).values():
            ray.kill(h, no_restart=True)


def test_start_stop_start_same_name_cli(config, schema, ray_local, capsys) -> None:
    """The CLI (detached workers, each command its own event loop and ``Projections``):
    ``projection start`` -> ``stop`` of one name, CLI_ROUNDS times; each start leaves exactly
    one live worker, a new one, answering status; each stop leaves none and the stopped worker
    dead; every command exits 0."""
    from raysource.cli.main import main

    args = [
        "--cassandra",
        f"{config.contact_points[0]}:{config.port}",
        "--keyspace",
        config.keyspace,
        "--spec",
        f"{__name__}:CLI_SPEC",
    ]
    name = CLI_SPEC.name
    control = Projections(config, detached=True)  # to find the workers
    seen = set()
    try:
        for round_ in range(CLI_ROUNDS):
            assert main(["projection", "start", *args]) == 0, capsys.readouterr()
            assert f"{name} 0/1: running" in capsys.readouterr().out, round_
            worker = only_worker(control, name)
            assert asyncio.run(_status(worker))["state"] == "running", round_
            assert worker._actor_id not in seen, f"round {round_}: not a new worker"
            seen.add(worker._actor_id)
            assert main(["projection", "stop", name, *args]) == 0, capsys.readouterr()
            assert f"{name} 0/1: not running (last: stopped)" in capsys.readouterr().out
            assert control.handles(name) == {}, round_
            asyncio.run(assert_dead(worker, f"round {round_}"))
    finally:
        for h in control.handles(name).values():
            ray.kill(h, no_restart=True)


async def _status(worker) -> dict:
    return await worker.status.remote()
