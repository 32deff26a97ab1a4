"""How raysource meets the Ray cluster: joining it (:func:`connect_ray`, the one way every
process joins: ``System``, the CLI, the service) and naming its actors.

Every named actor raysource creates is spelled, and parsed back, here and nowhere else:

==========================  ==============================================================
actor                       name
==========================  ==============================================================
dedicated host              ``<system>:<type>|<entity id>`` (the persistence id)
hosted host (one shard)     ``<system>:shard:<type>:<shard>`` (test doubles, benchmarks)
shared host (many shards)   ``<system>:hosts:<type>:<node id>:<slot>`` (the sharding layer)
warm pool host (one node)   ``<system>:pool:<node id>:<id>`` (``raysource.sharding.warm_pool``)
shard region (one node)     ``<system>:region:<node id>``
timer service (one node)    ``<system>:timers:<node id>``
shard coordinator           ``raysource-coordinator-<system>``
projection worker           ``raysource-projection:<projection>:<slice>-of-<n slices>``
==========================  ==============================================================

>>> host_name("demo", "show|hamlet")
'demo:show|hamlet'
>>> parse_name(shard_host_name("demo", "show", 3)).shard
3
>>> parse_name(shared_host_name("demo", "show", "ab12", 1)).slot
1
>>> parse_name(pool_host_name("demo", "ab12", "7f3a")).kind
'pool'
>>> parse_name(projection_name("by-customer", 0, 2)).projection
'by-customer'
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raysource.journal.errors import ConfigError

__all__ = [
    "ActorName",
    "connect_ray",
    "coordinator_name",
    "host_name",
    "parse_name",
    "pool_host_name",
    "projection_name",
    "projection_prefix",
    "region_name",
    "shard_host_name",
    "shared_host_name",
    "timer_service_name",
    "system_of",
]

_COORDINATOR = "raysource-coordinator-"
_PROJECTION = "raysource-projection:"

Kind = Literal["dedicated", "hosted", "pool", "region", "timers", "coordinator", "projection"]


@dataclass(frozen=True, slots=True)
class ActorName:
    """A parsed raysource actor name (fields that do not apply to the kind are None)."""

    kind: Kind
    system: str | None = None
    type_name: str | None = None
    shard: int | None = None
    persistence_id: str | None = None
    node_id: str | None = None
    projection: str | None = None
    slice_index: int | None = None
    n_slices: int | None = None
    slot: int | None = None


def host_name(system: str, persistence_id: str) -> str:
    """The dedicated host actor of one aggregate."""
    return f"{system}:{persistence_id}"


def shard_host_name(system: str, type_name: str, shard: int) -> str:
    """The hosted-placement actor of one shard of one type."""
    return f"{system}:shard:{type_name}:{shard}"


def shared_host_name(system: str, type_name: str, node_id: str, slot: int) -> str:
    """The hosted-placement actor of one slot of one type on one node (it hosts every shard
    ``s`` homed on that node with ``s % hosts_per_node == slot``)."""
    return f"{system}:hosts:{type_name}:{node_id}:{slot}"


def pool_host_name(system: str, node_id: str, pool_id: str) -> str:
    """A pre-started host actor of one node's warm pool (idle until the region assigns it one
    aggregate; it keeps this name for life, the region's registry maps the aggregate to it)."""
    return f"{system}:pool:{node_id}:{pool_id}"


def region_name(system: str, node_id: str) -> str:
    """The shard region actor of one node."""
    return f"{system}:region:{node_id}"


def timer_service_name(system: str, node_id: str) -> str:
    """The timer service actor of one node (``raysource.sharding.timer_service``)."""
    return f"{system}:timers:{node_id}"


def coordinator_name(system: str) -> str:
    """The shard coordinator of a system."""
    return f"{_COORDINATOR}{system}"


def projection_name(projection: str, slice_index: int, n_slices: int) -> str:
    """The worker of one slice of a projection."""
    return f"{_PROJECTION}{projection}:{slice_index}-of-{n_slices}"


def projection_prefix(projection: str) -> str:
    """The common prefix of every worker name of ``projection``."""
    return f"{_PROJECTION}{projection}:"


def parse_name(name: str) -> ActorName | None:
    """The :class:`ActorName` behind ``name``, or None if raysource did not spell it."""
    if name.startswith(_COORDINATOR):
        return ActorName("coordinator", system=name[len(_COORDINATOR) :])
    if name.startswith(_PROJECTION):
        projection, _, part = name[len(_PROJECTION) :].rpartition(":")
        index, _, total = part.partition("-of-")
        if projection and index.isdigit() and total.isdigit():
            return ActorName(
                "projection", projection=projection, slice_index=int(index), n_slices=int(total)
            )
        return None
    system, sep, rest = name.partition(":")
    if not sep or not system:
        return None
    if rest.startswith("shard:"):
        type_name, _, shard = rest[len("shard:") :].rpartition(":")
        if type_name and shard.isdigit():
            return ActorName("hosted", system=system, type_name=type_name, shard=int(shard))
        return None
    if rest.startswith("hosts:"):
        head, _, slot = rest[len("hosts:") :].rpartition(":")
        type_name, _, node = head.rpartition(":")
        if type_name and node and slot.isdigit():
            return ActorName(
                "hosted", system=system, type_name=type_name, node_id=node, slot=int(slot)
            )
        return None
    if rest.startswith("pool:"):
        node, _, pool_id = rest[len("pool:") :].rpartition(":")
        if node and pool_id:
            return ActorName("pool", system=system, node_id=node)
        return None
    if rest.startswith("region:"):
        return ActorName("region", system=system, node_id=rest[len("region:") :])
    if rest.startswith("timers:"):
        return ActorName("timers", system=system, node_id=rest[len("timers:") :])
    type_name, bar, _entity = rest.partition("|")
    if bar and type_name:
        return ActorName("dedicated", system=system, type_name=type_name, persistence_id=rest)
    return None


def system_of(name: str) -> str | None:
    """The system an actor belongs to (None for projection workers and foreign names)."""
    parsed = parse_name(name)
    return parsed.system if parsed is not None else None


def connect_ray(
    address: str | None = "auto",
    namespace: str | None = None,
    *,
    quiet: bool = False,
    **init_options: Any,
) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``: the one this machine runs), or start a
    local one (``None``/``"local"``); a no-op if this process is already connected. Every way
    this fails is one ``ConfigError``.

    Joining is bounded and authenticated:

    * a ``host:port`` address is probed first — a plain TCP connection, then the HTTP/2 client
      preface (Ray's GCS is a gRPC server and answers it with a SETTINGS frame) — so an
      unreachable address, or a port that is not a Ray GCS (e.g. Cassandra's), is a
      ``ConfigError`` within seconds where Ray's own connect loop retries for 20 s to minutes;
      Ray's GCS connect budget is shortened too (only where the caller did not set it);
    * token auth: Ray 2.60 clusters started by a local ``ray.init()`` (and every deployment in
      ``deploy/``) require a token, which a joining driver only sends with
      ``RAY_AUTH_MODE=token``. When the mode is not set and a token is available
      (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), token mode is
      switched on for this process; a refused token is a ``ConfigError`` saying how to pass
      the right one. The token itself is never printed.

    ``quiet`` silences Ray's C++ client on file descriptor 2 while joining (the CLI's error is
    one line). ``init_options`` go to ``ray.init`` as they are. Call it before anything imports
    ``ray`` when joining a token-authenticated cluster (Ray reads these settings at import; a
    token mode switched on later is pushed into Ray's cached config).
    """
    joining = address not in (None, "local")
    if address not in (None, "local", "auto"):
        _probe(address)
    switched = _prepare_env() if joining else False
    if switched and "ray" in sys.modules:
        # Ray caches its config at import: refresh it
        from ray._raylet import Config  # type: ignore[attr-defined]  # compiled, no stub

        Config.initialize("")
    import ray

    if ray.is_initialized():
        return
    options = {
        "log_to_driver": False,
        "configure_logging": False,
        "logging_level": logging.WARNING,
        **init_options,
    }
    try:
        with _quiet_stderr() if quiet else contextlib.nullcontext():
            ray.init(address=address, namespace=namespace, **options)
    except Exception as exc:  # noqa: BLE001 - every way Ray fails to join becomes one line
        if _auth_refused(exc):
            raise ConfigError(
                f"the Ray cluster at {address!r} refused this client's auth token: pass the "
                "cluster's token with RAY_AUTH_TOKEN=... or RAY_AUTH_TOKEN_PATH=file (and "
                "RAY_AUTH_MODE=token)"
            ) from exc
        raise ConfigError(
            f"could not join the Ray cluster at {address!r}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


# ------------------------------------------------------------------------ joining, the parts

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
        raise ConfigError(
            f"{address!r} does not answer like a Ray cluster (GCS) address; "
            "pass the head node's GCS address (host:6379 by default)"
        )


def _prepare_env() -> bool:
    """Set the bounded connect and token settings; True if token mode was switched on here."""
    for key, value in _BOUNDED_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_AUTH_MODE") is None and ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


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
