"""Contact points and ports of the dev node: parse ``host:port``, find a free port, and ask
whether a CQL session answers (this module and the node's security setup are the dev node's
only contact with cassandra-driver)."""

from __future__ import annotations

import re
import socket
from typing import Any

from raysource.journal.errors import ConfigError

__all__ = ["DEFAULT_NATIVE_PORT", "cql_answers", "free_port", "parse_contact_point", "port_is_free"]

DEFAULT_NATIVE_PORT = 9042


def parse_contact_point(text: str) -> tuple[str, int]:
    """Parse ``host:port`` (or ``host``, port 9042). Raises ConfigError on nonsense."""
    text = text.strip()
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?", text)
    if not text or not m:
        raise ConfigError(f"invalid Cassandra contact point {text!r}; expected host:port")
    port = int(m.group(2)) if m.group(2) else DEFAULT_NATIVE_PORT
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port in Cassandra contact point {text!r}")
    return m.group(1).strip("[]"), port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cql_answers(
    host: str,
    port: int,
    timeout: float = 5.0,
    *,
    login: tuple[str, str] | None = None,
    ssl_context: Any = None,
) -> bool:
    """True when a CQL session (with ``login`` and TLS ``ssl_context`` if given) can run
    ``SELECT release_version FROM system.local``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return False
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster  # heavy import: only when a port answers

    cluster = Cluster(
        [host],
        port=port,
        connect_timeout=timeout,
        protocol_version=5,
        auth_provider=PlainTextAuthProvider(*login) if login else None,
        ssl_context=ssl_context,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local", timeout=timeout).one()
        return row is not None
    except Exception:  # noqa: BLE001 - any failure means "not answering yet"
        return False
    finally:
        cluster.shutdown()
