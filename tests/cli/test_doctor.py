"""``raysource doctor`` against a running system on real Ray and the real Cassandra (issue 28):
a healthy deployment is all green (also through the CLI, ``--json``, exit 0); a stopped
projection, a missing schema table, a dead region and a frozen Cassandra each turn their line
red (the CLI exits 1), and only theirs (a frozen store also leaves the schema unchecked).

The frozen Cassandra is a TCP proxy in front of the shared node that stops answering: the
node itself is never touched."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from raysource.examples.seats import SHOW, CreateShow

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]


class FreezableProxy:
    """A TCP proxy to ``target``; :meth:`freeze` makes it swallow every byte (a node that
    accepts connections and never answers)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.frozen.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def deployment(cassandra_contact, cassandra_keyspace, ray_local):
    from raysource.examples.reservations_view import reservations_projection
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.readside.projection_actor import Projections
    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.system import System, unique_system_name

    host, port = cassandra_contact
    config = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        replication_factor=1,
        eventual_consistency_delay=2.0,
        connect_timeout=2.0,
        request_timeout=2.0,
    )
    namespace = ray_local.get_runtime_context().namespace
    system = System.start(
        unique_system_name("doc"),
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[SHOW],
        namespace=namespace,
    )
    control = Projections(config)
    projection = reservations_projection(name=f"doc-{uuid.uuid4().hex[:6]}")
    asyncio.run(control.start(projection))
    system.entity(SHOW, "doctor-1").ask(CreateShow(10), timeout=60)  # a region exists
    try:
        yield system, control, projection, config, namespace
    finally:
        try:
            asyncio.run(control.stop(projection.name))
        except Exception:  # noqa: BLE001 - teardown
            pass
        system.shutdown()


def _diagnose(deployment, **overrides):
    from raysource.ops.doctor import DoctorSettings, diagnose

    system, _control, projection, config, namespace = deployment
    kwargs = {"projections": (projection.name,), "timeout_s": 8.0, **overrides}
    settings = DoctorSettings(config, system=system.name, namespace=namespace, **kwargs)
    return {c.name: c for c in asyncio.run(diagnose(settings))}


def _red(checks) -> set[str]:
    return {name for name, c in checks.items() if not c.ok}


def _cli(deployment, *extra: str) -> subprocess.CompletedProcess:
    import ray

    system, _control, projection, config, namespace = deployment
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "raysource.cli",
            "doctor",
            "--json",
            "--cassandra",
            f"{config.contact_points[0]}:{config.port}",
            "--keyspace",
            config.keyspace,
            "--system",
            system.name,
            "--namespace",
            namespace,
            "--address",
            ray.get_runtime_context().gcs_address,
            "--projection",
            projection.name,
            "--timeout",
            "10",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RAY_ADDRESS": ""},
    )


NAMES = {"cassandra", "schema", "ray", "coordinator", "regions", "shards", "timers", "clock skew"}


@pytest.mark.timeout(300)
def test_healthy_all_green_then_each_fault_turns_exactly_its_line_red(
    deployment, cassandra_admin
) -> None:
    import ray

    from raysource.runtime.actors.cluster import region_name

    system, control, projection, config, namespace = deployment
    line = f"projection {projection.name}"
    checks = _diagnose(deployment)
    assert set(checks) == NAMES | {line}
    assert _red(checks) == set(), {n: c.detail for n, c in checks.items() if not c.ok}

    # the CLI: the same table as JSON, exit 0
    done = _cli(deployment)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and {c["name"] for c in report["checks"]} == NAMES | {line}

    # hot aggregates: the busy entity shows in `raysource status`'s figures (the hosts' sweeps)
    from raysource.examples.seats import GetShow
    from raysource.ops.status import host_status

    ref, hot = system.entity(SHOW, "doctor-1"), []
    until = time.monotonic() + 120
    while not hot and time.monotonic() < until:
        for _ in range(10):
            ref.ask(GetShow(), timeout=60)
        hot = [
            f
            for h in host_status(system.name, namespace)
            for f in h["hot"]["by_commands_per_s"]
            if f["entity_id"] == "doctor-1" and f["commands_per_s"] > 0
        ]
        time.sleep(0.5)
    assert hot, host_status(system.name, namespace)

    # a missing schema table: the schema line, naming it
    cassandra_admin.execute(f"DROP TABLE {config.keyspace}.snapshots", timeout=60)
    try:
        checks = _diagnose(deployment)
        assert _red(checks) == {"schema"}, {n: c.detail for n, c in checks.items()}
        assert "snapshots" in checks["schema"].detail
    finally:
        from raysource.journal.cassandra.schema import schema_statements

        for stmt in schema_statements(config, keyspace=False):
            if ".snapshots " in stmt:
                cassandra_admin.execute(stmt, timeout=60)

    # a frozen Cassandra (a proxy that stops answering): its line, within the check's deadline
    from dataclasses import replace

    proxy = FreezableProxy((config.contact_points[0], config.port))
    try:
        via = (*deployment[:3], replace(config, port=proxy.port), namespace)
        assert _red(_diagnose(via)) == set()
        proxy.freeze()
        checks = _diagnose(via, projections=())
        assert _red(checks) == {"cassandra", "schema"}, {n: c.detail for n, c in checks.items()}
        assert (
            "no answer" in checks["cassandra"].detail
            or "Unavailable" in checks["cassandra"].detail
            or "Timeout" in checks["cassandra"].detail
        )
        assert checks["schema"].detail == "not checked: Cassandra is not reachable"
    finally:
        proxy.close()

    # a dead region: the regions line
    info = ray.get(system.coordinator.describe.remote(), timeout=30)
    [node] = info["regions"]
    ray.kill(ray.get_actor(region_name(system.name, node), namespace=namespace))
    checks = _diagnose(deployment)
    assert _red(checks) == {"regions"}, {n: c.detail for n, c in checks.items() if not c.ok}
    assert node[:8] in checks["regions"].detail

    # a stopped projection: its line (and the CLI exits 1)
    asyncio.run(control.stop(projection.name))
    checks = _diagnose(deployment)
    assert _red(checks) == {"regions", line}, {n: c.detail for n, c in checks.items()}
    assert "not running" in checks[line].detail
    done = _cli(deployment)
    assert done.returncode == 1, done.stdout + done.stderr
    assert {c["name"] for c in json.loads(done.stdout)["checks"] if not c["ok"]} == {
        "regions",
        line,
    }
