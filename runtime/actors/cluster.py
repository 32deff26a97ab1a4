"""How raysource meets the Ray cluster: joining it (:func:`connect_ray`) and naming its actors.

Every named actor raysource creates is spelled, and parsed back, here and nowhere else:

==========================  ==============================================================
actor                       name
==========================  ==============================================================
dedicated host              ``<system>:<type>|<entity id>`` (the persistence id)
hosted host (one shard)     ``<system>:shard:<type>:<shard>``
shard region (one node)     ``<system>:region:<node id>``
shard coordinator           ``raysource-coordinator-<system>``
projection worker           ``raysource-projection:<projection>:<slice>-of-<n slices>``
==========================  ==============================================================

>>> host_name("demo", "show|hamlet")
'demo:show|hamlet'
>>> parse_name(shard_host_name("demo", "show", 3))
ActorName(kind='hosted', system='demo', type_name='show', shard=3, persistence_id=None, node_id=None, projection=None, slice_index=None, n_slices=None)
>>> parse_name(projection_name("by-customer", 0, 2)).projection
'by-customer'
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from raysource.journal.errors import ConfigError

__all__ = [
    "ActorName",
    "connect_ray",
    "coordinator_name",
    "host_name",
    "parse_name",
    "projection_name",
    "projection_prefix",
    "region_name",
    "shard_host_name",
    "system_of",
]

_COORDINATOR = "raysource-coordinator-"
_PROJECTION = "raysource-projection:"

Kind = Literal["dedicated", "hosted", "region", "coordinator", "projection"]


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


def host_name(system: str, persistence_id: str) -> str:
    """The dedicated host actor of one aggregate."""
    return f"{system}:{persistence_id}"


def shard_host_name(system: str, type_name: str, shard: int) -> str:
    """The hosted-placement actor of one shard of one type."""
    return f"{system}:shard:{type_name}:{shard}"


def region_name(system: str, node_id: str) -> str:
    """The shard region actor of one node."""
    return f"{system}:region:{node_id}"


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
        return ActorName("coordinator", system=name[len(_COORDINATOR):])
    if name.startswith(_PROJECTION):
        projection, _, part = name[len(_PROJECTION):].rpartition(":")
        index, _, total = part.partition("-of-")
        if projection and index.isdigit() and total.isdigit():
            return ActorName("projection", projection=projection, slice_index=int(index),
                             n_slices=int(total))
        return None
    system, sep, rest = name.partition(":")
    if not sep or not system:
        return None
    if rest.startswith("shard:"):
        type_name, _, shard = rest[len("shard:"):].rpartition(":")
        if type_name and shard.isdigit():
            return ActorName("hosted", system=system, type_name=type_name, shard=int(shard))
        return None
    if rest.startswith("region:"):
        return ActorName("region", system=system, node_id=rest[len("region:"):])
    type_name, bar, _entity = rest.partition("|")
    if bar and type_name:
        return ActorName("dedicated", system=system, type_name=type_name, persistence_id=rest)
    return None


def system_of(name: str) -> str | None:
    """The system an actor belongs to (None for projection workers and foreign names)."""
    parsed = parse_name(name)
    return parsed.system if parsed is not None else None


def connect_ray(address: str | None = "auto", namespace: str | None = None, *,
                probe_timeout_s: float = 3.0, **init_options: Any) -> None:
    """Join the Ray cluster at ``address`` (a no-op if this process is already connected).

    ``address=None`` starts a local Ray instance. A ``host:port`` address is probed with a
    plain TCP connection first (``ray.init`` retries an unreachable GCS for minutes), so an
    unreachable address is a ``ConfigError`` within ``probe_timeout_s``; so is any failure
    of ``ray.init`` itself (e.g. a token-authenticated cluster without the token: the
    message says how to pass it). ``init_options`` go to ``ray.init`` as they are.
    """
    import ray

    if ray.is_initialized():
        return
    if address not in (None, "auto", "local"):
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        if host and port.isdigit():
            try:
                socket.create_connection((host, int(port)), timeout=probe_timeout_s).close()
            except OSError as exc:
                raise ConfigError(f"no Ray cluster reachable at {address!r}: {exc}") from exc
    try:
        options = {"log_to_driver": False, "configure_logging": False,
                   "logging_level": logging.WARNING, **init_options}
        ray.init(address=address, namespace=namespace, **options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        hint = ""
        if "auth" in str(exc).lower() and not os.environ.get("RAY_AUTH_MODE"):
            hint = (" (the cluster uses token authentication: export RAY_AUTH_MODE=token "
                    "and the cluster's token, see Ray's token authentication docs)")
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {exc}{hint}") from exc
