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
    cassandra_admin.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime shared by the session (shut down at the end)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster some other process started on this host
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            namespace=f"raysource-test-{uuid.uuid4().hex[:6]}",
        )
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Ray-free unit tests first: they assert Ray is not running (``unit_guard``), and
    the session's local Ray, once started by a Ray test, stays up until the end."""
    items.sort(key=lambda item: 0 if "no_ray" in getattr(item, "fixturenames", ()) else 1)


def pytest_report_header(config: pytest.Config) -> str:
    """The property suites' fresh seed of this run (``tests/seeds.py``): set it to replay."""
    from seeds import REPLAY

    return f"property tests: fresh seed {REPLAY} (set it in the environment to replay this run)"
