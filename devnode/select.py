"""Where a tool gets Cassandra from.

* :func:`select_cassandra` (tests, the demo, the load test, benchmarks), in order: an explicit
  contact point (``RAYSOURCE_CASSANDRA=host:port``), a running local node, Docker via
  testcontainers when a Docker engine answers, else it starts the local node from Maven jars.
* :func:`operator_config` (the operator commands: ``events``, ``state``, ``projection``, ...):
  the Cassandra config of a running deployment, never starting anything: an explicit contact
  point, else ``$RAYSOURCE_CASSANDRA``, else the running local node (with its password and CA
  files when it runs with ``--auth``/``--tls`` and the environment names none); credentials and
  TLS from the environment (:meth:`~raysource.journal.cassandra.config.CassandraConfig.from_env`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raysource.devnode.local_node import LocalCassandra
from raysource.devnode.net import parse_contact_point
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import ConfigError

__all__ = ["CassandraSource", "docker_available", "operator_config", "select_cassandra"]


@dataclass
class CassandraSource:
    """Where Cassandra comes from for this process, and how to give it back."""

    kind: str  # "explicit" | "local-running" | "docker" | "local-started"
    host: str
    port: int
    description: str
    _cleanup: Callable[[], object] | None = None

    @property
    def contact_point(self) -> str:
        return f"{self.host}:{self.port}"

    def release(self) -> None:
        """Stop what this selection started (a Docker container or the local node)."""
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()


def docker_available(timeout: float = 2.0) -> bool:
    try:
        import docker  # testcontainers' dependency; only present with the test extra
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


def select_cassandra(
    explicit: str | None = None,
    *,
    node: LocalCassandra | None = None,
    allow_docker: bool = True,
    stop_started_node: bool = True,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> CassandraSource:
    """Pick Cassandra for tests and the demo and print the choice.

    Order: ``explicit`` or ``$RAYSOURCE_CASSANDRA``; a running local node; Docker through
    testcontainers when an engine answers; else start the local node from Maven jars.
    ``release()`` on the result stops only what this call started (the local node only if
    ``stop_started_node``).
    """
    explicit = explicit or os.environ.get("RAYSOURCE_CASSANDRA") or None
    if explicit:
        host, port = parse_contact_point(explicit)
        src = CassandraSource("explicit", host, port, f"explicit contact point {host}:{port}")
        say(f"raysource: Cassandra source = {src.description}")
        return src
    node = node or LocalCassandra()
    status = node.status()
    if status.running:
        src = CassandraSource(
            "local-running",
            status.host,
            status.port,
            f"running local node {status.contact_point} (pid {status.pid})",
        )
        say(f"raysource: Cassandra source = {src.description}")
        return src
    if allow_docker and docker_available():
        from testcontainers.cassandra import CassandraContainer

        say("raysource: Cassandra source = Docker (testcontainers), starting container ...")
        container = CassandraContainer("cassandra:5.0")
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(9042))
        src = CassandraSource(
            "docker", host, port, f"Docker container {host}:{port}", container.stop
        )
        say(f"raysource: Cassandra source = {src.description}")
        return src
    say("raysource: Cassandra source = local node from Maven jars (starting) ...")
    # on the node's existing data: a test or demo run never wipes what an earlier one kept
    status = node.start(progress=lambda m: say(f"raysource: {m}"), fresh=False)
    src = CassandraSource(
        "local-started",
        status.host,
        status.port,
        f"local node started from Maven jars at {status.contact_point} "
        f"in {status.start_seconds or 0:.1f} s (log {status.log_file})",
        node.stop if stop_started_node else None,
    )
    say(f"raysource: Cassandra source = {src.description}")
    return src


def operator_config(
    contact: str | None = None,
    *,
    keyspace: str = "raysource",
    environ: Mapping[str, str] | None = None,
    node: LocalCassandra | None = None,
    **settings: Any,
) -> CassandraConfig:
    """The Cassandra config of a running deployment (see the module docstring); ``settings``
    are further :class:`CassandraConfig` fields (e.g. ``connect_timeout``). A malformed contact
    point is a ``ConfigError`` (``RAYSOURCE_CASSANDRA: ...`` when it came from there), and so
    is no Cassandra at all: nothing is started."""
    env = dict(os.environ if environ is None else environ)
    if not contact and env.get("RAYSOURCE_CASSANDRA"):
        try:
            CassandraConfig.from_contact(env["RAYSOURCE_CASSANDRA"])
        except ConfigError as exc:
            raise ConfigError(f"RAYSOURCE_CASSANDRA: {exc}") from None
        contact = env["RAYSOURCE_CASSANDRA"]
    if not contact:
        status = (node or LocalCassandra()).status()
        if not status.running:
            raise ConfigError(
                "no Cassandra to read from: pass --cassandra host:port, set RAYSOURCE_CASSANDRA, "
                "or start the local node with `raysource cassandra start`"
            )
        for key, value in status.client_env.items():
            env.setdefault(key, value)
        contact = status.contact_point
    return CassandraConfig.from_env(contact, environ=env, keyspace=keyspace, **settings)
