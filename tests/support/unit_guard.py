"""Unit tests of the runtime core must never start Ray: this fixture fails them loudly if they do.

Use in a test module::

    from unit_guard import no_ray  # noqa: F401  (registers the autouse fixture)
"""

from __future__ import annotations

import sys

import pytest


def ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a unit test used Ray")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch):
    """Ray must not be started or used. Where an earlier module of this process already
    started Ray (``make test TEST_WORKERS=2`` runs modules in any order), the test sees Ray as
    not initialised and every way into it (init, tasks, actors, get/put/wait) fails it."""
    if not ray_running():
        yield
        assert not ray_running(), "a unit test started Ray"
        return
    import ray
    import ray.actor
    import ray.remote_function

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    for owner, name in (
        (ray, "init"),
        (ray, "get"),
        (ray, "put"),
        (ray, "wait"),
        (ray, "get_actor"),
        (ray.actor.ActorClass, "_remote"),
        (ray.actor.ActorMethod, "_remote"),
        (ray.remote_function.RemoteFunction, "_remote"),
    ):
        monkeypatch.setattr(owner, name, _refuse)
    yield
