"""Authentication and client-to-node TLS end to end, against a real, private Cassandra node
started once for this module (``LocalCassandra(auth=True, tls=True)``: PasswordAuthenticator,
TLS-only native port, a private CA made with openssl) on a free port — never the shared node.

What is attacked: a plain-text client, a wrong password, the well-known default superuser and a
client that does not trust the node's CA are all refused; the password never shows in a repr,
an error, the CLI's output or the node's command line. What must work: the journal, a Ray host
of a running System (the config is pickled to the actor, which builds its own SSLContext and
reads the password file itself) and the CLI (credentials and TLS from the environment only),
and a restart with ``raysource cassandra start --keep-data`` keeps the data and the login.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import subprocess
import sys
import time
import uuid
from datetime import UTC
from pathlib import Path

import cloudpickle
import pytest
import ray

from raysource.devnode.local_node import LocalCassandra, raysource_home
from raysource.devnode.net import free_port
from raysource.journal.cassandra.config import CassandraConfig, TlsSettings
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import JournalError

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WRONG = "definitely-Not-the-pa55word"
SHOW_GALA = "show|gala"  # the persistence id test_ray_host_through_a_system writes


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """(node, client environment) of a private authenticated TLS node; its home shares the
    session's jar cache and is the RAYSOURCE_HOME the CLI tests use."""
    home = tmp_path_factory.mktemp("securehome")
    (home / "cassandra").mkdir()
    jars_version = raysource_home() / "cassandra"
    for version_dir in jars_version.iterdir():
        if (version_dir / "jars").is_dir():
            (home / "cassandra" / version_dir.name).symlink_to(version_dir)
    node = LocalCassandra(home=home, port=free_port(), heap="512M", auth=True, tls=True)
    status = node.start()
    assert status.running and status.started_by_us
    yield node, dict(status.client_env)
    node.stop()


def _config(env: dict[str, str], **kw) -> CassandraConfig:
    return CassandraConfig.from_env(environ=env, connect_timeout=10.0, request_timeout=20.0, **kw)


def _password(env: dict[str, str]) -> str:
    return Path(env["RAYSOURCE_CASSANDRA_PASSWORD_FILE"]).read_text().strip()


def _cli(env: dict[str, str], home: Path, *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAYSOURCE_")}
    return subprocess.run(
        [sys.executable, "-m", "raysource.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**base, **env, "RAYSOURCE_HOME": str(home)},
    )


def test_secrets_are_private_and_never_shown(secure) -> None:
    node, env = secure
    assert stat.S_IMODE(node.state_dir.stat().st_mode) == 0o700
    pw_file = Path(env["RAYSOURCE_CASSANDRA_PASSWORD_FILE"])
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = _password(env)
    assert len(password) >= 24
    assert all(password not in v for v in env.values())
    cmdline = Path(f"/proc/{node.status().pid}/cmdline").read_bytes().decode()
    assert password not in cmdline
    cfg = _config(env)
    assert cfg.username == "raysource" and password not in repr(cfg)
    assert cfg.tls is not None and cfg.tls.check_hostname


async def test_journal_round_trip_over_authenticated_tls(secure) -> None:
    _, env = secure
    cfg = _config(env, keyspace=f"sec_{uuid.uuid4().hex[:8]}")
    journal = await CassandraJournal.connect(cfg, create_schema=True)
    try:
        from datetime import datetime

        from raysource.journal.api import StoredEvent

        now = datetime.now(UTC)
        events = [StoredEvent("acct|1", n, b"e%d" % n, "t.E#1", 1, now, "w1") for n in (1, 2, 3)]
        await journal.append(events)
        assert await journal.highest_sequence_nr("acct|1") == 3
        back = [e.payload async for e in journal.replay("acct|1")]
        assert back == [b"e1", b"e2", b"e3"]
    finally:
        await journal.close()


async def test_plain_text_client_is_refused(secure) -> None:
    _, env = secure
    plain = _config(env).with_(tls=None)
    with pytest.raises(JournalError) as info:
        await CassandraJournal.connect(plain)
    _assert_refused(info.value)
    assert _password(env) not in str(info.value)
    from cassandra.cluster import Cluster, NoHostAvailable

    host, port = env["RAYSOURCE_CASSANDRA"].split(":")
    cluster = Cluster([host], port=int(port), protocol_version=5, connect_timeout=5)
    with pytest.raises(NoHostAvailable):
        cluster.connect()  # no auth provider, no TLS: the raw driver is refused too
    cluster.shutdown()


@pytest.mark.parametrize(
    "who", ["wrong-password", "default-superuser", "untrusted-ca", "no-credentials"]
)
async def test_bad_credentials_or_trust_are_refused(secure, who, tmp_path) -> None:
    _, env = secure
    cfg = _config(env)
    if who == "wrong-password":
        cfg = cfg.with_(password_file=None, password=WRONG)
    elif who == "default-superuser":
        cfg = cfg.with_(username="cassandra", password_file=None, password="cassandra")
    elif who == "untrusted-ca":  # the system CAs did not sign the node's certificate
        cfg = cfg.with_(tls=TlsSettings(ca_file=None))
    else:
        cfg = cfg.with_(username=None, password_file=None)
    with pytest.raises(JournalError) as info:
        await CassandraJournal.connect(cfg)
    text = str(info.value)
    assert WRONG not in text and _password(env) not in text
    causes = _assert_refused(info.value)
    if who in ("wrong-password", "default-superuser", "no-credentials"):
        from cassandra import AuthenticationFailed

        assert all(isinstance(c, AuthenticationFailed) for c in causes), causes
    if who in ("wrong-password", "default-superuser"):
        assert "Bad credentials" in text, text
    if who == "untrusted-ca":
        assert any("CERTIFICATE_VERIFY_FAILED" in str(c) for c in causes), causes


def _assert_refused(err: JournalError) -> list:
    """A refused connect is exactly ``JournalUnavailableError`` (nothing sent: not the unknown
    outcome, not an invalid request) caused by the driver's ``NoHostAvailable``; returns its
    per-host errors."""
    from cassandra.cluster import NoHostAvailable

    from raysource.journal.errors import JournalUnavailableError

    assert type(err) is JournalUnavailableError, repr(err)
    assert isinstance(err.__cause__, NoHostAvailable), repr(err.__cause__)
    causes = list(err.__cause__.errors.values())
    assert causes, err.__cause__
    return causes


@pytest.mark.ray
def test_ray_host_through_a_system(secure, ray_local) -> None:
    """The config (TLS settings, password file path) is pickled into the host actor's spec; the
    actor builds its own SSLContext, logs in, and its events land in the journal."""
    from raysource.examples.seats import SHOW, ReserveSeat
    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.system import System

    _, env = secure
    password = _password(env)
    cfg = _config(env, keyspace=f"sec_{uuid.uuid4().hex[:8]}")
    store = StoreSpec.for_cassandra(cfg, create_schema=True)
    # what travels to the actors is the password file's path, never the password (issue 23 #9)
    assert password.encode() not in cloudpickle.dumps(store)
    assert env["RAYSOURCE_CASSANDRA_PASSWORD_FILE"].encode() in cloudpickle.dumps(store)
    system = System.start(
        f"sec{uuid.uuid4().hex[:6]}",
        types=[SHOW],
        store=store,
        placement={"show": "hosted"},
    )
    try:
        ref = system.entity(SHOW, "gala")
        ref.ask(ReserveSeat("A1", "alice"), timeout=60)
        ref.ask(ReserveSeat("B2", "bob"), timeout=60)
        assert ref.state(timeout=60).reservations == {"A1": "alice", "B2": "bob"}
    finally:
        system.shutdown()

    async def stored() -> int:
        journal = await CassandraJournal.connect(cfg)
        try:
            return await journal.highest_sequence_nr(SHOW.persistence_id("gala"))
        finally:
            await journal.close()

    assert asyncio.run(stored()) == 2
    # ... and no log of this Ray session (drivers, workers, raylet, GCS) shows the password
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    read = [f for f in logs.rglob("*") if f.is_file()]
    assert read, f"no Ray logs under {logs}"
    assert [f.name for f in read if password.encode() in f.read_bytes()] == []
    TestCli.keyspace = cfg.keyspace  # the CLI tests read what the host wrote


class TestCli:
    keyspace = ""

    def test_cli_reads_with_credentials_from_the_environment(self, secure) -> None:
        node, env = secure
        assert self.keyspace, "runs after test_ray_host_through_a_system"
        out = _cli(env, node.home, "events", "show", "gala", "--keyspace", self.keyspace)
        assert out.returncode == 0, out.stderr
        assert "SeatReserved" in out.stdout and out.stdout.count("\n") == 2
        assert _password(env) not in out.stdout + out.stderr

    def test_cli_wrong_password_is_one_line(self, secure, tmp_path) -> None:
        node, env = secure
        bad = tmp_path / "pw"
        bad.write_text(WRONG)
        out = _cli(
            {**env, "RAYSOURCE_CASSANDRA_PASSWORD_FILE": str(bad)},
            node.home,
            "events",
            "show",
            "gala",
            "--keyspace",
            self.keyspace,
        )
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert "Bad credentials" in lines[0] and WRONG not in out.stderr + out.stdout

    def test_cli_plain_text_is_one_line(self, secure) -> None:
        node, env = secure
        plain = {k: v for k, v in env.items() if "TLS" not in k}
        out = _cli(plain, node.home, "events", "show", "gala", "--keyspace", self.keyspace)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert "Cassandra unavailable" in lines[0]

    def test_cli_uses_the_secured_local_node_without_variables(self, secure) -> None:
        """No RAYSOURCE_* variables: the CLI finds the running local node and its password and
        CA files by itself."""
        node, env = secure
        out = _cli({}, node.home, "events", "show", "gala", "--keyspace", self.keyspace)
        assert out.returncode == 0 and out.stdout.count("SeatReserved") == 2, out.stderr

    def test_cli_restart_keeps_data_and_login(self, secure) -> None:
        """Last: ``raysource cassandra stop`` then ``start --keep-data --auth --tls`` on the same
        state dir; the events and the raysource role's password survive."""
        node, env = secure
        # a session open across the restart must find the node again by itself, within the
        # bounded reconnection delay (the driver's default backs off to 600 s)
        loop = asyncio.new_event_loop()
        cfg = _config(env, keyspace=self.keyspace, reconnect_max_delay=2.0)
        journal = loop.run_until_complete(CassandraJournal.connect(cfg))
        assert loop.run_until_complete(journal.highest_sequence_nr(SHOW_GALA)) == 2
        policy = journal.session._cluster.reconnection_policy
        delays = list(itertools.islice(policy.new_schedule(), 40))
        assert max(delays) == 2.0 and len(delays) == 40  # bounded, and it never gives up
        stop = _cli({}, node.home, "cassandra", "stop")
        assert stop.returncode == 0 and "Cassandra stopped" in stop.stdout, stop.stderr
        start = _cli(
            {},
            node.home,
            "cassandra",
            "start",
            "--keep-data",
            "--auth",
            "--tls",
            "--port",
            str(node.port),
        )
        assert start.returncode == 0, start.stderr

        async def reconnected() -> float:
            t0 = time.monotonic()
            while True:
                try:
                    assert await journal.highest_sequence_nr(SHOW_GALA) == 2
                    return time.monotonic() - t0
                except JournalError:
                    if time.monotonic() - t0 > 60:
                        raise
                    await asyncio.sleep(0.5)

        try:
            waited = loop.run_until_complete(reconnected())
        finally:
            loop.run_until_complete(journal.close())
            loop.close()
        # the same session came back by itself (60 s: a hang guard, not a speed target), and its
        # driver retries on the bounded schedule (the driver's default grows to 600 s)
        assert waited < 60

        assert (
            f"export RAYSOURCE_CASSANDRA_PASSWORD_FILE={env['RAYSOURCE_CASSANDRA_PASSWORD_FILE']}"
            in start.stdout
        )
        assert _password(env) not in start.stdout + start.stderr
        out = _cli(env, node.home, "events", "show", "gala", "--keyspace", self.keyspace)
        assert out.returncode == 0 and out.stdout.count("SeatReserved") == 2, out.stderr
