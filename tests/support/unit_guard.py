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


@pytest.fixture(autouse=True)
def no_ray():
    assert not ray_running(), "Ray was already running before a unit test"
    yield
    assert not ray_running(), "a unit test started Ray"
