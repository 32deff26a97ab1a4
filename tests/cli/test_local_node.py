"""The local Cassandra launcher against a real node (its own state dir and ports)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from raysource.devnode.errors import CassandraNodeError
from raysource.devnode.local_node import LocalCassandra, raysource_home
from raysource.devnode.net import cql_answers, free_port, parse_contact_point, port_is_free
from raysource.journal.errors import ConfigError

pytestmark = pytest.mark.cassandra


def _node(name: str, **kw) -> LocalCassandra:
    # Same jar cache as the session node, separate state dir and ports.
    return LocalCassandra(name=name, home=raysource_home(), heap="512M", **kw)


def test_start_status_roundtrip_reuse_and_stop() -> None:
    node = _node("launcher-test", port=free_port())
    node.stop()
    try:
        started = node.start()
        assert started.running and started.started_by_us
        assert started.start_seconds is not None and started.start_seconds > 0

        from cassandra.cluster import Cluster

        cluster = Cluster([started.host], port=started.port, protocol_version=5)
        session = cluster.connect()
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS launcher WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute("CREATE TABLE IF NOT EXISTS launcher.kv (k text PRIMARY KEY, v int)")
        session.execute("INSERT INTO launcher.kv (k, v) VALUES ('a', 42)")
        assert session.execute("SELECT v FROM launcher.kv WHERE k = 'a'").one().v == 42
        cluster.shutdown()

        status = node.status()
        assert status.running and status.pid == started.pid and status.port == started.port

        again = node.start()  # a second start reuses the running node
        assert again.running and not again.started_by_us and again.pid == started.pid
    finally:
        assert node.stop() is True
    assert not node.status().running
    assert port_is_free("127.0.0.1", started.port)
    assert not cql_answers("127.0.0.1", started.port)
    assert node.stop() is False  # nothing left to stop


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(CassandraNodeError, match=f"port 127.0.0.1:{taken} is already in use"):
            _node("port-test", port=taken).start()


def test_bogus_java_home_is_a_clear_error(tmp_path: Path) -> None:
    node = _node("java-test", java_home=str(tmp_path / "no-such-jdk"))
    with pytest.raises(CassandraNodeError, match="has no bin/java"):
        node.start()


def test_wrong_java_version_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "jdk21" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"21.0.2\" 2024-01-16' >&2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(CassandraNodeError, match="Java 21; Cassandra .* needs Java 17"):
        _node("java21-test", java_home=str(tmp_path / "jdk21")).start()


def test_node_exit_reports_code_and_log() -> None:
    node = _node("exit-test", port=free_port())
    node.heap = "notasize"  # the JVM refuses to start: exits non-zero at once
    with pytest.raises(CassandraNodeError, match=r"exited with code \d+") as info:
        node.start()
    assert str(node.log_file) in str(info.value)
    assert "Invalid initial heap size" in str(info.value)  # the last log lines are shown


def test_stale_pid_file_is_handled() -> None:
    node = _node("stale-test", port=free_port())
    node.state_dir.mkdir(parents=True, exist_ok=True)
    # A live pid that is not a Cassandra node of ours (this very test process).
    (node.state_dir / "node.json").write_text(
        json.dumps({"pid": os.getpid(), "host": "127.0.0.1", "port": node.port})
    )
    assert not node.status().running
    assert node.stop() is False  # must not signal the unrelated process
    assert not (node.state_dir / "node.json").exists()


def test_maven_failure_is_a_clear_error(tmp_path: Path) -> None:
    node = LocalCassandra(name="mvn-test", home=tmp_path, version="0.0.0-does-not-exist")
    with pytest.raises(CassandraNodeError, match="Maven could not resolve"):
        node.resolve_jars()


def test_contact_point_parsing() -> None:
    assert parse_contact_point("db.example:9142") == ("db.example", 9142)
    assert parse_contact_point("10.0.0.7") == ("10.0.0.7", 9042)
    for bad in ["", "host:99999", "a b:1", "host:port"]:
        with pytest.raises(ConfigError):
            parse_contact_point(bad)


def test_cli_status_reports_the_session_node(cassandra_source) -> None:
    if cassandra_source.kind not in ("local-running", "local-started"):
        pytest.fail("this test needs the local node")  # CI always uses the local node
    out = subprocess.run(
        [sys.executable, "-m", "raysource.cli", "cassandra", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"contact point {cassandra_source.contact_point}" in out.stdout


def test_operator_config_finds_a_running_deployment_and_starts_nothing(
    cassandra_source, tmp_path: Path
) -> None:
    """``operator_config`` (the operator commands' Cassandra): an explicit contact point, else
    ``$RAYSOURCE_CASSANDRA``, else the running local node; none of them is an error that
    starts nothing."""
    from raysource.devnode.select import operator_config

    idle = LocalCassandra(name="no-node", home=tmp_path)
    config = operator_config(
        "db1:9142", keyspace="ks1", environ={"RAYSOURCE_CASSANDRA": "db2:9043"}, node=idle
    )
    assert (config.contact_points, config.port, config.keyspace) == (("db1",), 9142, "ks1")
    config = operator_config(
        None, environ={"RAYSOURCE_CASSANDRA": "db2:9043"}, node=idle, connect_timeout=3.0
    )
    assert (config.contact_points, config.port, config.connect_timeout) == (("db2",), 9043, 3.0)
    with pytest.raises(ConfigError, match="RAYSOURCE_CASSANDRA: "):
        operator_config(None, environ={"RAYSOURCE_CASSANDRA": "db:notaport"}, node=idle)
    with pytest.raises(ConfigError, match="no Cassandra to read from"):
        operator_config(None, environ={}, node=idle)
    assert not idle.status().running and not (tmp_path / "cassandra" / "no-node").exists()
    if cassandra_source.kind not in ("local-running", "local-started"):
        pytest.fail("this test needs the local node")  # CI always uses the local node
    config = operator_config(None, environ={})  # the running local node
    assert f"{config.contact_points[0]}:{config.port}" == cassandra_source.contact_point


def test_out_of_range_ports_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for bad in (0, -1, 65536, 99999):
        with pytest.raises(ConfigError, match="invalid port"):
            LocalCassandra(name="bad-port", home=tmp_path, port=bad)
        with pytest.raises(ConfigError, match="invalid storage port"):
            LocalCassandra(name="bad-port", home=tmp_path, storage_port=bad)
    assert not (tmp_path / "cassandra").exists()  # nothing was created


def test_state_dir_is_private(tmp_path: Path) -> None:
    node = LocalCassandra(name="private", home=tmp_path)
    node._write_state({"pid": 0})
    assert stat.S_IMODE(node.state_dir.stat().st_mode) == 0o700
