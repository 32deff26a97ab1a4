"""A real, local Apache Cassandra node for development, tests and the demo — no Docker needed.

The node's life cycle (resolve, configure, start, wait, stop, status); its JVM flags and yaml
are plain data in ``raysource.devnode.node_config``, where a tool gets Cassandra from is
``raysource.devnode.select``.

The node is built from Maven Central's ``cassandra-all`` jars (resolved once with the small pom in
``cassandra-pom.xml`` (package data beside this module) into a cache outside the repo) and started
as a plain ``CassandraDaemon`` JVM with the JDK 17 flags and fast-start settings of a throwaway
node.

    node = LocalCassandra()          # state under $RAYSOURCE_HOME (default ~/.cache/raysource)
    status = node.start()            # reuses a running node; waits until CQL answers
    print(status.contact_point)      # "127.0.0.1:9042"
    node.stop()                      # SIGTERM, then SIGKILL after a timeout

Every failure raises :class:`~raysource.devnode.errors.CassandraNodeError` saying what failed
and where the log is. This module never imports Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raysource.devnode.errors import CassandraNodeError
from raysource.devnode.net import DEFAULT_NATIVE_PORT, cql_answers, free_port, port_is_free
from raysource.devnode.node_config import LOGBACK, cassandra_yaml, jvm_flags
from raysource.devnode.node_security import NodeSecurity
from raysource.journal.errors import ConfigError

CASSANDRA_VERSION = "5.0.8"
_REPO_POM = Path(__file__).resolve().parent / "cassandra-pom.xml"  # package data


def raysource_home() -> Path:
    """Where raysource keeps caches and state outside the repo."""
    return Path(os.environ.get("RAYSOURCE_HOME", Path.home() / ".cache" / "raysource"))


@dataclass(frozen=True)
class NodeStatus:
    """What ``status()`` / ``start()`` report about a node."""

    running: bool
    host: str
    port: int
    pid: int | None
    state_dir: Path
    log_file: Path
    started_by_us: bool = False  # this call started it (False: reused or not running)
    start_seconds: float | None = None
    client_env: dict[str, str] = field(default_factory=dict)  # RAYSOURCE_CASSANDRA* (no secret)

    @property
    def contact_point(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        if not self.running:
            return f"Cassandra is not running (state dir {self.state_dir})"
        how = "started" if self.started_by_us else "running"
        took = f" in {self.start_seconds:.1f} s" if self.start_seconds is not None else ""
        return (
            f"Cassandra {how}{took}: contact point {self.contact_point} "
            f"(pid {self.pid}, log {self.log_file})"
        )


@dataclass
class LocalCassandra:
    """One local Cassandra node: its jars, state directory, ports and process.

    ``name`` separates several nodes (e.g. a 3-node cluster on 127.0.0.1-3) under one home.
    ``port=None`` picks 9042 when free, else any free port. ``auth``/``tls``: password
    authentication and TLS-only client connections (``raysource.devnode.node_security``); the
    status's ``client_env`` then names the password and CA files a client needs.
    """

    name: str = "node1"
    host: str = "127.0.0.1"
    port: int | None = None
    home: Path = field(default_factory=raysource_home)
    java_home: str | None = field(default_factory=lambda: os.environ.get("JAVA_HOME"))
    heap: str = "1G"
    version: str = CASSANDRA_VERSION
    seeds: str | None = None  # "127.0.0.1:7000,..." for multi-node; default: itself
    cluster_name: str = "raysource-dev"
    initial_token: str = "0"
    storage_port: int | None = None
    start_timeout: float = 180.0
    auth: bool = False
    tls: bool = False

    def __post_init__(self) -> None:
        for what, port in (("port", self.port), ("storage port", self.storage_port)):
            if port is not None and not (isinstance(port, int) and 0 < port < 65536):
                raise ConfigError(f"invalid {what} {port!r}: must be 1-65535")

    # ------------------------------------------------------------------ paths

    @property
    def jars_dir(self) -> Path:
        return self.home / "cassandra" / self.version / "jars"

    @property
    def state_dir(self) -> Path:
        return self.home / "cassandra" / self.name

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "system.log"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "node.json"

    def _security(self, info: dict | None = None) -> NodeSecurity:
        """The running node's settings (from its state file), else this object's."""
        auth, tls = (
            (self.auth, self.tls) if not info else (bool(info.get("auth")), bool(info.get("tls")))
        )
        return NodeSecurity(self.state_dir / "security", self.host, auth, tls)

    def _answers(self, host: str, port: int, sec: NodeSecurity) -> bool:
        ctx = sec.ssl_context()
        logins: list[tuple[str, str] | None] = [*sec.client_logins()] or [None]
        return any(cql_answers(host, port, login=login, ssl_context=ctx) for login in logins)

    def _status(
        self,
        running: bool,
        host: str,
        port: int,
        pid: int | None,
        sec: NodeSecurity,
        started: bool = False,
        took: float | None = None,
    ) -> NodeStatus:
        env = sec.client_env(f"{host}:{port}") if running else {}
        return NodeStatus(
            running,
            host,
            port,
            pid if running else None,
            self.state_dir,
            self.log_file,
            started,
            took,
            env,
        )

    # ------------------------------------------------------------------ public API

    def status(self) -> NodeStatus:
        info = self._read_state()
        pid, port = info.get("pid"), int(info.get("port") or self.port or DEFAULT_NATIVE_PORT)
        host = info.get("host", self.host)
        sec = self._security(info)
        running = (
            pid is not None
            and bool(pid)
            and self._is_our_process(pid)
            and self._answers(host, port, sec)
        )
        return self._status(running, host, port, pid, sec)

    def start(
        self, progress: Callable[[str], None] | None = None, *, fresh: bool = True
    ) -> NodeStatus:
        """Start the node (or reuse the running one) and wait until CQL answers.

        ``fresh`` wipes the data directory first (a throwaway node); ``fresh=False`` restarts
        the node on its existing data (e.g. a ring member coming back after an outage).
        """
        say = progress or (lambda _msg: None)
        info = self._read_state()
        pid = info.get("pid")
        if pid and self._is_our_process(pid):
            host, port = info["host"], int(info["port"])
            sec = self._security(info)
            say(f"reusing the running node (pid {pid})")
            deadline = time.monotonic() + self.start_timeout
            while not self._answers(host, port, sec):
                if not self._is_our_process(pid):
                    break
                if time.monotonic() > deadline:
                    raise CassandraNodeError(
                        f"Cassandra (pid {pid}) runs but CQL on {host}:{port} does not answer; "
                        f"log: {self.log_file}"
                    )
                time.sleep(1.0)
            else:
                sec.setup_role(port)
                return self._status(True, host, port, pid, sec)
        elif pid:
            say(f"removing stale pid file (pid {pid} is not a Cassandra node of ours)")
        self._state_file.unlink(missing_ok=True)

        java = self._java()
        jars = self.resolve_jars(say)
        port = self._choose_port()
        storage_port = self.storage_port or free_port(self.host)
        if not port_is_free(self.host, storage_port):
            raise CassandraNodeError(f"storage port {self.host}:{storage_port} is already in use")

        data_dir = self.state_dir / "data"
        if fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        self._private_state_dir()
        sec = self._security()
        if fresh:  # a wiped node has no raysource role yet
            sec.password_file.unlink(missing_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        yaml_path = self.state_dir / "cassandra.yaml"
        yaml_path.write_text(self._yaml(port, storage_port) + sec.prepare())
        logback = self.state_dir / "logback.xml"
        logback.write_text(LOGBACK)

        cmd = [java, *self._jvm_flags(yaml_path, logback, data_dir)]
        cmd += ["-cp", os.pathsep.join(str(p) for p in sorted(jars.glob("*.jar")))]
        cmd += ["org.apache.cassandra.service.CassandraDaemon"]
        say(f"starting Cassandra {self.version} on {self.host}:{port} (log {self.log_file})")
        t0 = time.monotonic()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,  # outlives the CLI that started it
            )
        self._write_state(
            {
                "pid": proc.pid,
                "host": self.host,
                "port": port,
                "version": self.version,
                "auth": self.auth,
                "tls": self.tls,
            }
        )
        deadline = t0 + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._state_file.unlink(missing_ok=True)
                raise CassandraNodeError(
                    f"the Cassandra node exited with code {code} during start-up; "
                    f"log: {self.log_file}\n--- last log lines ---\n{self.tail_log()}"
                )
            if self._answers(self.host, port, sec):
                sec.setup_role(port)
                took = time.monotonic() - t0
                return self._status(True, self.host, port, proc.pid, sec, True, took)
            if time.monotonic() > deadline:
                self._terminate(proc.pid)
                raise CassandraNodeError(
                    f"Cassandra did not answer CQL on {self.host}:{port} within "
                    f"{self.start_timeout:.0f} s; log: {self.log_file}\n--- last log lines "
                    f"---\n{self.tail_log()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop exactly the node this state dir started. Returns False if none was running."""
        info = self._read_state()
        pid = info.get("pid")
        self._state_file.unlink(missing_ok=True)
        if not pid or not self._is_our_process(pid):
            return False
        self._terminate(pid, timeout)
        return True

    def resolve_jars(self, say: Callable[[str], None] | None = None) -> Path:
        """Resolve cassandra-all and its runtime deps from Maven Central into the cache, once."""
        marker = self.jars_dir / ".complete"
        if marker.exists():
            return self.jars_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise CassandraNodeError(
                "Maven ('mvn') is not on PATH; it is needed once to fetch the Cassandra jars "
                "(or set RAYSOURCE_CASSANDRA=host:port to use an existing cluster)"
            )
        if say:
            say(f"resolving cassandra-all {self.version} from Maven Central into {self.jars_dir}")
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        pom = self.jars_dir.parent / "pom.xml"
        pom.write_text(_pom_text().replace(_pom_version(_pom_text()), self.version))
        log = self.jars_dir.parent / "mvn.log"
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={self.jars_dir}",
        ]
        with open(log, "wb") as out:
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
        if code != 0 or not any(self.jars_dir.glob("cassandra-all-*.jar")):
            raise CassandraNodeError(
                f"Maven could not resolve org.apache.cassandra:cassandra-all:{self.version} "
                f"(exit {code}); log: {log}\n{_tail(log)}"
            )
        marker.write_text(self.version)
        return self.jars_dir

    def tail_log(self, lines: int = 25) -> str:
        return _tail(self.log_file, lines)

    # ------------------------------------------------------------------ internals

    def _java(self) -> str:
        if self.java_home:
            java = Path(self.java_home) / "bin" / "java"
            if not java.exists():
                raise CassandraNodeError(
                    f"JAVA_HOME={self.java_home} has no bin/java; point JAVA_HOME at a JDK 17"
                )
            java_cmd = str(java)
        else:
            found = shutil.which("java")
            if found is None:
                raise CassandraNodeError(
                    "no 'java' on PATH: install OpenJDK 17 (Cassandra 5.0 runs on Java 11/17), "
                    "or set RAYSOURCE_CASSANDRA=host:port to use an existing cluster"
                )
            java_cmd = found
        try:
            out = subprocess.run(
                [java_cmd, "-version"], capture_output=True, text=True, timeout=30
            ).stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CassandraNodeError(f"cannot run {java_cmd} -version: {exc}") from exc
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        major = int(m.group(1)) if m else 0
        if major == 1 and m and m.group(2):
            major = int(m.group(2))
        if major not in (11, 17):
            raise CassandraNodeError(
                f"{java_cmd} is Java {major or 'unknown'}; Cassandra {self.version} needs Java 17 "
                "(or 11). Set JAVA_HOME to a JDK 17."
            )
        return java_cmd

    def _choose_port(self) -> int:
        if self.port is not None:
            if not port_is_free(self.host, self.port):
                raise CassandraNodeError(
                    f"port {self.host}:{self.port} is already in use by another process; "
                    "choose another port or stop what holds it"
                )
            return self.port
        if port_is_free(self.host, DEFAULT_NATIVE_PORT):
            return DEFAULT_NATIVE_PORT
        return free_port(self.host)

    def _jvm_flags(self, yaml_path: Path, logback: Path, data_dir: Path) -> list[str]:
        (self.state_dir / "tmp").mkdir(exist_ok=True)
        return jvm_flags(
            self.heap, yaml_path, logback, data_dir, self.log_file.parent, self.state_dir / "tmp"
        )

    def _yaml(self, port: int, storage_port: int) -> str:
        return cassandra_yaml(
            cluster_name=self.cluster_name,
            initial_token=self.initial_token,
            seeds=self.seeds or f"{self.host}:{storage_port}",
            host=self.host,
            port=port,
            storage_port=storage_port,
        )

    def _is_our_process(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return "CassandraDaemon" in cmdline and str(self.state_dir) in cmdline

    def _terminate(self, pid: int, timeout: float = 30.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not _alive(pid):
                return
            time.sleep(0.1)

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, info: dict) -> None:
        self._private_state_dir()
        self._state_file.write_text(json.dumps(info))

    def _private_state_dir(self) -> None:
        """The state dir (data, logs, config, credentials) is readable by its owner only."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.chmod(0o700)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _pom_text() -> str:
    if _REPO_POM.exists():
        return _REPO_POM.read_text()
    raise CassandraNodeError(f"the Cassandra pom is missing: {_REPO_POM}")


def _pom_version(pom: str) -> str:
    m = re.search(r"<cassandra.version>([^<]+)</cassandra.version>", pom)
    return m.group(1) if m else CASSANDRA_VERSION
