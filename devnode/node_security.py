"""Authentication and client-to-node TLS for the local Cassandra node (``LocalCassandra(auth=True,
tls=True)``, ``raysource cassandra start --auth --tls``): what production runs, on a laptop.

* **TLS**: a private CA and a node certificate for the node's address (IP and DNS subject
  alternative names, so clients check the hostname) made with ``openssl`` once per node, the
  node's key in a PKCS12 keystore; the native port takes TLS only (``optional: false``), so a
  plain-text client is refused. Clients trust ``ca.pem``.
* **Authentication**: ``PasswordAuthenticator`` + ``CassandraAuthorizer``. On a fresh node the
  well-known ``cassandra``/``cassandra`` superuser is used once to create the ``raysource`` role
  with a random password (written to ``password``, mode 0600), and is then locked (random
  password, no login).

Everything lives in ``<state dir>/security`` (the state dir is 0700). Passwords are passed to
``openssl`` through files, never on a command line, and are never printed: clients get the
*paths* (:meth:`NodeSecurity.client_env`), the variables ``CassandraConfig.from_env`` reads.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysource.devnode.errors import CassandraNodeError

__all__ = ["NodeSecurity", "ROLE"]

ROLE = "raysource"
_DEFAULT_ROLE = ("cassandra", "cassandra")


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass(frozen=True)
class NodeSecurity:
    """The secrets and settings of one secured local node (``dir``: its security folder)."""

    dir: Path
    host: str
    auth: bool
    tls: bool

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.dir / "node.p12"

    @property
    def password_file(self) -> Path:
        return self.dir / "password"

    # ------------------------------------------------------------------ node side

    def prepare(self) -> str:
        """Make what is missing (CA, node certificate, keystore) and return the cassandra.yaml
        lines for these settings."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.chmod(0o700)
        lines = []
        if self.auth:
            lines += [
                "authenticator: PasswordAuthenticator",
                "authorizer: CassandraAuthorizer",
                "role_manager: CassandraRoleManager",
            ]
        if self.tls:
            self._make_certificates()
            store_pw = (self.dir / "keystore.password").read_text().strip()
            lines += [
                "client_encryption_options:",
                "  enabled: true",
                "  optional: false",
                f"  keystore: {self.keystore}",
                f"  keystore_password: {store_pw}",
                "  store_type: PKCS12",
                "  require_client_auth: false",
            ]
        return "\n".join(lines) + ("\n" if lines else "")

    def _make_certificates(self) -> None:
        if self.keystore.exists() and self.ca_file.exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise CassandraNodeError(
                "'openssl' is not on PATH; it is needed to make the local node's TLS certificates"
            )
        d = self.dir
        _private_write(d / "keystore.password", secrets.token_urlsafe(18) + "\n")
        san = (
            f"subjectAltName=IP:{self.host},DNS:localhost"
            if _is_ip(self.host)
            else f"subjectAltName=DNS:{self.host},DNS:localhost"
        )
        (d / "node.ext").write_text(f"{san}\nextendedKeyUsage=serverAuth\n")
        steps = [
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3650",
                "-subj",
                "/CN=raysource local CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "node.key",
                "-out",
                "node.csr",
                "-subj",
                f"/CN={self.host}",
            ],
            [
                "x509",
                "-req",
                "-in",
                "node.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "node.pem",
                "-days",
                "3650",
                "-extfile",
                "node.ext",
            ],
            [
                "pkcs12",
                "-export",
                "-in",
                "node.pem",
                "-inkey",
                "node.key",
                "-certfile",
                "ca.pem",
                "-name",
                "node",
                "-out",
                "node.p12",
                "-passout",
                "file:keystore.password",
            ],
        ]
        old = os.umask(0o077)
        try:
            for step in steps:
                out = subprocess.run(
                    [openssl, *step], cwd=d, capture_output=True, text=True, timeout=60
                )
                if out.returncode != 0:
                    raise CassandraNodeError(
                        f"openssl {step[0]} failed (exit {out.returncode}): "
                        f"{out.stderr.strip()[-300:]}"
                    )
        finally:
            os.umask(old)

    def client_logins(self) -> list[tuple[str, str]]:
        """Credentials to try while waiting for CQL: the raysource role if set up, else the
        default superuser of a fresh node."""
        if not self.auth:
            return []
        logins = []
        if self.password_file.exists():
            logins.append((ROLE, self.password_file.read_text().strip()))
        return logins + [_DEFAULT_ROLE]

    def setup_role(self, port: int, timeout: float = 60.0) -> None:
        """On a node with authentication: make sure the raysource role logs in with the
        password in ``password``; create it (and lock the default superuser) if not."""
        if not self.auth:
            return
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import Cluster

        if self.password_file.exists() and self._login_works(port, (ROLE, self._password())):
            return
        password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe inside a CQL literal
        cluster = Cluster(
            [self.host],
            port=port,
            protocol_version=5,
            connect_timeout=timeout,
            auth_provider=PlainTextAuthProvider(*_DEFAULT_ROLE),
            ssl_context=self.ssl_context(),
        )
        try:
            s = cluster.connect()
            exists = s.execute(
                "SELECT role FROM system_auth.roles WHERE role = %s", (ROLE,), timeout=timeout
            ).one()
            verb = "ALTER" if exists else "CREATE"  # (changing it just after CREATE is refused)
            s.execute(
                f"{verb} ROLE {ROLE} WITH PASSWORD = '{password}' AND LOGIN = true "
                "AND SUPERUSER = true",
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - one clear error, without the password
            raise CassandraNodeError(
                f"could not set up the {ROLE} role on the secured node ({type(exc).__name__})"
            ) from None
        finally:
            cluster.shutdown()
        _private_write(self.password_file, password + "\n")
        cluster = Cluster(
            [self.host],
            port=port,
            protocol_version=5,
            connect_timeout=timeout,
            auth_provider=PlainTextAuthProvider(ROLE, password),
            ssl_context=self.ssl_context(),
        )
        try:  # the well-known default superuser must not stay usable
            cluster.connect().execute(
                f"ALTER ROLE cassandra WITH PASSWORD = '{secrets.token_urlsafe(24)}' "
                "AND LOGIN = false",
                timeout=timeout,
            )
        finally:
            cluster.shutdown()
        # Cassandra caches credentials (credentials_validity, 2 s by default): the old login
        # keeps working until the cache entry expires. Return only once it is refused.
        deadline = time.monotonic() + timeout
        while self._login_works(port, _DEFAULT_ROLE):
            if time.monotonic() > deadline:
                raise CassandraNodeError(
                    "the default superuser still logs in after it was locked on the secured node"
                )
            time.sleep(0.25)

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    def _login_works(self, port: int, login: tuple[str, str]) -> bool:
        from raysource.devnode.net import cql_answers

        return cql_answers(self.host, port, login=login, ssl_context=self.ssl_context())

    # ------------------------------------------------------------------ client side

    def ssl_context(self) -> Any:
        """The client TLS context for this node (None without TLS)."""
        if not self.tls:
            return None
        from raysource.journal.cassandra.config import TlsSettings

        return TlsSettings(ca_file=str(self.ca_file)).ssl_context()

    def client_env(self, contact_point: str) -> dict[str, str]:
        """The ``RAYSOURCE_CASSANDRA*`` variables a client needs (paths, never a password)."""
        env = {"RAYSOURCE_CASSANDRA": contact_point}
        if self.auth:
            env["RAYSOURCE_CASSANDRA_USERNAME"] = ROLE
            env["RAYSOURCE_CASSANDRA_PASSWORD_FILE"] = str(self.password_file)
        if self.tls:
            env["RAYSOURCE_CASSANDRA_TLS_CA"] = str(self.ca_file)
        return env


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
