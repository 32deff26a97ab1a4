"""Shared fixtures: one real Cassandra per test session, a fresh keyspace per module, local Ray.

Cassandra comes from ``raysource.devnode.select.select_cassandra`` (explicit RAYSOURCE_CASSANDRA,
a running local node, Docker, else a node started from Maven jars) and the choice is printed.
If none can be had the fixture *fails* the tests that need it — it never skips them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from raysource.devnode.net import parse_contact_point
from raysource.devnode.select import CassandraSource, select_cassandra


@pytest.fixture(scope="session")
def cassandra_source() -> Iterator[CassandraSource]:
    try:
        # a node this session starts stays up for the next session (``make cassandra-stop``
        # stops it): sessions running side by side share it, and none may stop it under the
        # others (the first one used to, when it ended)
        source = select_cassandra(stop_started_node=False, say=lambda m: print(m, flush=True))
    except Exception as exc:  # noqa: BLE001 - turned into a loud failure, never a skip
        pytest.fail(
            f"no Cassandra could be had for the tests (CI={os.environ.get('CI', '')!r}): {exc}",
            pytrace=False,
        )
    yield source
    source.release()


@pytest.fixture(scope="session")
def cassandra_contact(cassandra_source: CassandraSource) -> tuple[str, int]:
    """(host, port) of the session's Cassandra."""
    return parse_contact_point(cassandra_source.contact_point)


@pytest.fixture(scope="session")
def cassandra_admin(cassandra_contact: tuple[str, int]):
    """A plain (blocking) driver session for test set-up and inspection."""
    from cassandra.cluster import Cluster

    host, port = cassandra_contact
    cluster = Cluster([host], port=port, protocol_version=5)
    session = cluster.connect()
    yield session
    for drop in _DROPS:
        drop.result()
    cluster.shutdown()


@pytest.fixture(scope="module")
def cassandra_keyspace(request: pytest.FixtureRequest, cassandra_admin) -> Iterator[str]:
    """A fresh keyspace name for this test module (created empty, dropped afterwards)."""
    module = re.sub(r"[^a-z0-9]", "", request.module.__name__.rsplit(".", 1)[-1].lower())[:24]
    name = f"t_{module}_{uuid.uuid4().hex[:8]}"
    cassandra_admin.execute(
        f"CREATE KEYSPACE {name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    yield name
    # not waited for: the next module's tests run while Cassandra drops it (the session's
    # end waits for every drop: ``cassandra_admin``)
    _DROPS.append(cassandra_admin.execute_async(f"DROP KEYSPACE IF EXISTS {name}", timeout=60))


_DROPS: list = []  # keyspace drops in flight (ResponseFutures)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime shared by the session (shut down at the end). Its metrics agent
    (``ray[default]``) exports Prometheus on a known port: :func:`ray_metrics_port`."""
    import ray
    import session_ray

    if not ray.is_initialized():
        session_ray.start()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_port(ray_local) -> int:
    """The Prometheus endpoint's port of the session's Ray (scraped over HTTP by tests)."""
    import session_ray

    if not session_ray.METRICS_PORT:
        pytest.fail("the session's Ray was started elsewhere: its metrics port is unknown")
    return session_ray.METRICS_PORT[0]


# Modules that need a Ray of their own (job-level options the session's Ray must not have):
# run right after the Ray-free tests, before the session's Ray starts, so it is neither shut
# down nor started again for them.
_OWN_RAY = ("tests/runtime/test_observability_ray.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Ray-free unit tests first: they assert Ray is not running (``unit_guard``), and
    the session's local Ray, once started by a Ray test, stays up until the end. Then the
    modules with a Ray of their own (:data:`_OWN_RAY`), then the rest. Under pytest-xdist
    (``make test`` runs two workers) the ``slow`` modules of the rest go first, so the run
    does not end with one worker busy on a long module while the other has nothing left."""
    slow_first = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    def order(item: pytest.Item) -> tuple[int, int]:
        if "no_ray" in getattr(item, "fixturenames", ()):
            return 0, 0
        if item.nodeid.split("::")[0].endswith(_OWN_RAY):
            return 1, 0
        return 2, 0 if slow_first and item.get_closest_marker("slow") else 1

    items.sort(key=order)


def pytest_configure(config: pytest.Config) -> None:
    """One fresh seed for the whole run: the worker processes of ``-n 2`` (pytest-xdist)
    inherit it from this environment, so the header's seed replays every worker's draws."""
    from seeds import ENV, SEED

    os.environ.setdefault(ENV, str(SEED))


def pytest_report_header(config: pytest.Config) -> str:
    """The property suites' fresh seed of this run (``tests/support/seeds.py``): set it to
    replay."""
    from seeds import REPLAY

    return f"property tests: fresh seed {REPLAY} (set it in the environment to replay this run)"
