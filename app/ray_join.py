"""Join a running Ray cluster from a command-line process: bounded, authenticated, one clear error.

``join_ray(address, namespace)`` is what every ``--address`` of the CLI goes through:

* **bounded**: a plain TCP probe, then an HTTP/2 probe (Ray's GCS is a gRPC server: it answers
  the HTTP/2 preface with a SETTINGS frame) answer within seconds, so an unreachable address or a
  port that is not a Ray GCS (e.g. Cassandra's) is a ``ConfigError`` at once; Ray's own connect
  loop would retry for 20 s to minutes. Ray's GCS connect budget is shortened too
  (``RAY_gcs_server_port_wait_time_s``/``RAY_gcs_rpc_server_connect_timeout_s``, only when the
  caller did not set them).
* **token auth**: Ray 2.60 clusters started by a local ``ray.init()`` (and every deployment in
  ``deploy/``) require a token; a joining driver only sends one when ``RAY_AUTH_MODE=token``.
  When the mode is not set and a token is available (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), token mode is switched on for this process.
  A refused token is a ``ConfigError`` saying how to pass the right one. The token itself is never
  printed.

Call it before anything imports ``ray`` in the process (Ray reads these settings at import):
``ConfigError`` is raised if Ray was imported first and the settings could not take effect.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from raysource.journal.errors import ConfigError

__all__ = ["join_ray", "ray_token_available", "is_grpc_server", "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 3.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_BOUNDED_ENV = {
    "RAY_gcs_server_port_wait_time_s": "3",  # connect attempts (~1 s each), default 20
    "RAY_gcs_rpc_server_connect_timeout_s": "5",
}


def ray_token_available() -> bool:
    """True when a Ray auth token can be found the way Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidate = Path(path).expanduser() if path else Path.home() / ".ray" / "auth_token"
    try:
        return bool(candidate.read_text().strip())
    except OSError:
        return False


def is_grpc_server(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``host:port`` answers the HTTP/2 client preface with a SETTINGS frame (as every
    gRPC server, and so Ray's GCS, does). ``OSError`` when nothing accepts the connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(_H2_PREFACE)
        head = b""
        try:
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            return False
    return len(head) == 9 and head[3] == 0x04


def _probe(address: str) -> None:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid Ray address {address!r}: expected host:port or 'auto'")
    try:
        grpc = is_grpc_server(host, int(port))
    except OSError as exc:
        raise ConfigError(f"no Ray cluster reachable at {address!r}: {exc}") from None
    if not grpc:
        raise ConfigError(f"{address!r} does not answer like a Ray cluster (GCS) address; "
                          "pass the head node's GCS address (host:6379 by default)")


def _prepare_env() -> bool:
    """Set the bounded connect and token settings; True if token mode was switched on here."""
    for key, value in _BOUNDED_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_AUTH_MODE") is None and ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


def join_ray(address: str | None, namespace: str | None) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``: the one this machine runs) or raise a
    one-line ``ConfigError``. No-op if this process is already connected."""
    import logging

    address = address or "auto"
    if address != "auto":
        _probe(address)
    switched = _prepare_env()
    if switched and "ray" in sys.modules:
        from ray._raylet import Config  # Ray caches its config at import: refresh it

        Config.initialize("")
    import ray

    if ray.is_initialized():
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs every failed attempt to fd 2
            ray.init(address=address, namespace=namespace, log_to_driver=False,
                     configure_logging=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - every way Ray fails to join becomes one line
        if _auth_refused(exc):
            raise ConfigError(
                f"the Ray cluster at {address!r} refused this client's auth token: pass the "
                "cluster's token with RAY_AUTH_TOKEN=... or RAY_AUTH_TOKEN_PATH=file (and "
                "RAY_AUTH_MODE=token)") from None
        raise ConfigError(f"could not join the Ray cluster at {address!r}: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (the CLI's error is one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _auth_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if "AuthenticationError" in text or "InvalidAuthToken" in text or "Unauthenticated" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
