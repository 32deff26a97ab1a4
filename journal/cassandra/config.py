"""Configuration of the Cassandra session, journal and snapshot store."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from raysource.journal.errors import ConfigError

__all__ = ["CassandraConfig", "validate_identifier", "CONSISTENCY_NAMES"]

_IDENT = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,47}")

CONSISTENCY_NAMES = (
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM",
    "SERIAL", "LOCAL_SERIAL", "LOCAL_ONE",
)


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a safe CQL identifier (``[a-zA-Z][a-zA-Z0-9_]{0,47}``).

    Keyspace and table names are interpolated into CQL text (they cannot be bind markers), so
    this check is what prevents CQL injection.
    """
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid {what} {name!r}: must match [a-zA-Z][a-zA-Z0-9_]{{0,47}}")
    return name


@dataclass(frozen=True)
class CassandraConfig:
    """Where and how to reach Cassandra, and how the journal lays out its tables.

    * replication: ``replication_strategy`` "SimpleStrategy" with ``replication_factor``, or
      "NetworkTopologyStrategy" with ``datacenters`` {dc: rf} (used only when creating the
      keyspace).
    * consistency: ``write_consistency``/``read_consistency`` (default LOCAL_QUORUM),
      ``serial_consistency`` for the fencing guard's conditional batches (default LOCAL_SERIAL).
    * ``partition_size``: events per (persistence id, partition) — bounds partition size; an
      atomic group may not contain more events than this.
    * ``fencing``: the single-writer guard (conditional batches), default on.
    * ``eventual_consistency_delay``: seconds the tag query stays behind "now" (see
      ``raysource.journal.cassandra.journal``); ``tag_write_budget`` must be smaller (default: half of it).
    * ``max_payload_bytes``: the serializer's limit (passed on by the runtime).
    """

    contact_points: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    local_dc: str | None = None
    keyspace: str = "raysource"
    replication_strategy: str = "SimpleStrategy"
    replication_factor: int = 1
    datacenters: Mapping[str, int] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    write_consistency: str = "LOCAL_QUORUM"
    read_consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    partition_size: int = 5000
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    fencing: bool = True
    max_payload_bytes: int = 1_000_000
    fetch_size: int = 1000
    events_table: str = "messages"
    metadata_table: str = "metadata"
    tag_table: str = "tag_views"
    tag_metadata_table: str = "tag_metadata"
    snapshots_table: str = "snapshots"
    eventual_consistency_delay: float = 5.0
    tag_write_budget: float | None = None
    executor_threads: int = 2
    protocol_version: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.contact_points, str):
            object.__setattr__(self, "contact_points", (self.contact_points,))
        object.__setattr__(self, "contact_points", tuple(self.contact_points))
        if not self.contact_points or not all(
            isinstance(c, str) and c.strip() for c in self.contact_points
        ):
            raise ConfigError(f"contact_points must be non-empty host names: "
                              f"{self.contact_points!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port!r}")
        validate_identifier(self.keyspace, "keyspace")
        for t in (self.events_table, self.metadata_table, self.tag_table, self.tag_metadata_table,
                  self.snapshots_table):
            validate_identifier(t, "table name")
        if self.replication_strategy not in ("SimpleStrategy", "NetworkTopologyStrategy"):
            raise ConfigError(f"unknown replication strategy {self.replication_strategy!r}")
        if self.replication_strategy == "NetworkTopologyStrategy":
            if not self.datacenters:
                raise ConfigError("NetworkTopologyStrategy needs datacenters={dc: rf}")
            for dc, rf in self.datacenters.items():
                if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", dc) or not (
                    isinstance(rf, int) and rf >= 1
                ):
                    raise ConfigError(f"invalid datacenter replication {dc!r}: {rf!r}")
        elif not (isinstance(self.replication_factor, int) and self.replication_factor >= 1):
            raise ConfigError(f"invalid replication_factor {self.replication_factor!r}")
        for name in ("write_consistency", "read_consistency"):
            if getattr(self, name) not in CONSISTENCY_NAMES:
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}")
        if self.serial_consistency not in ("SERIAL", "LOCAL_SERIAL"):
            raise ConfigError(f"serial_consistency must be SERIAL or LOCAL_SERIAL, got "
                              f"{self.serial_consistency!r}")
        if not (isinstance(self.partition_size, int) and self.partition_size >= 1):
            raise ConfigError(f"partition_size must be an int >= 1, got {self.partition_size!r}")
        for name in ("request_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.fetch_size < 1 or self.executor_threads < 1 or self.max_payload_bytes < 1:
            raise ConfigError("fetch_size, executor_threads and max_payload_bytes must be >= 1")
        if self.eventual_consistency_delay <= 0:
            raise ConfigError("eventual_consistency_delay must be > 0")
        budget = self.tag_budget
        if not 0 < budget < self.eventual_consistency_delay:
            raise ConfigError("tag_write_budget must be > 0 and < eventual_consistency_delay")
        if (self.username is None) != (self.password is None):
            raise ConfigError("username and password go together")

    @property
    def tag_budget(self) -> float:
        if self.tag_write_budget is not None:
            return self.tag_write_budget
        return self.eventual_consistency_delay / 2

    @classmethod
    def from_contact(cls, contact: str | tuple[str, int], **kwargs: Any) -> "CassandraConfig":
        """Build a config from ``"host:port"`` (or a ``(host, port)`` tuple) plus overrides."""
        if isinstance(contact, tuple):
            host, port = contact
        else:
            host, sep, port_s = contact.strip().rpartition(":")
            if not sep:
                host, port_s = contact.strip(), "9042"
            try:
                port = int(port_s)
            except ValueError as exc:
                raise ConfigError(f"invalid contact point {contact!r}") from exc
        if not host:
            raise ConfigError(f"invalid contact point {contact!r}")
        return cls(contact_points=(host,), port=int(port), **kwargs)

    def with_(self, **changes: Any) -> "CassandraConfig":
        return replace(self, **changes)
