"""Configuration of the Cassandra session, journal and snapshot store.

Everything here is plain, picklable data: a config travels to every Ray host in its store spec,
and each process builds its own driver objects (TLS context, auth provider) from it when it
connects. Secrets never appear in a config's repr (and so not in a host or store spec's).

Environment (``CassandraConfig.from_env``; the CLI reads the same variables):

==========================================  ==================================================
``RAYSOURCE_CASSANDRA``                      ``host[,host2...][:port]`` contact points
``RAYSOURCE_CASSANDRA_USERNAME``             role name (PasswordAuthenticator)
``RAYSOURCE_CASSANDRA_PASSWORD_FILE``        file holding the password (preferred: only the path
                                             travels in specs; each process reads the file)
``RAYSOURCE_CASSANDRA_PASSWORD``             the password itself (if no file)
``RAYSOURCE_CASSANDRA_TLS_CA``               CA bundle (PEM): client-to-node TLS on
``RAYSOURCE_CASSANDRA_TLS_CERT``/``_KEY``    client certificate and key (PEM) for mutual TLS
``RAYSOURCE_CASSANDRA_TLS_CHECK_HOSTNAME``   ``0`` to skip hostname checking (default: checked)
``RAYSOURCE_CASSANDRA_LOCAL_DC``             the driver's local data centre
==========================================  ==================================================

Credentials are never taken from a command line (argv is visible to every local user).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from raysource.journal.errors import ConfigError

__all__ = [
    "CassandraConfig",
    "TlsSettings",
    "validate_identifier",
    "CONSISTENCY_NAMES",
    "consistency_overlap",
    "GUARDS",
]

_IDENT = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,47}")

CONSISTENCY_NAMES = (
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "SERIAL",
    "LOCAL_SERIAL",
    "LOCAL_ONE",
)
_ENV = "RAYSOURCE_CASSANDRA"
#: The single-writer guards of the Cassandra journal (``CassandraConfig.guard``).
GUARDS = ("epoch", "per-append", "off")


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a safe CQL identifier (``[a-zA-Z][a-zA-Z0-9_]{0,47}``).

    Keyspace and table names are interpolated into CQL text (they cannot be bind markers), so
    this check is what prevents CQL injection.
    """
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid {what} {name!r}: must match [a-zA-Z][a-zA-Z0-9_]{{0,47}}")
    return name


@dataclass(frozen=True)
class TlsSettings:
    """Client-to-node TLS as plain paths (picklable): each process builds its own
    ``ssl.SSLContext`` with :meth:`ssl_context` (an ``SSLContext`` itself cannot be pickled,
    so it cannot travel to Ray hosts).

    * ``ca_file``: PEM bundle of the CA(s) that signed the nodes' certificates (None: the
      system's default CAs);
    * ``cert_file``/``key_file``: the client's certificate and key for mutual TLS (optional;
      both or neither);
    * ``check_hostname``: the node's certificate must name the contact point (default on).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("TLS cert_file and key_file go together")

    def ssl_context(self) -> ssl.SSLContext:
        """A fresh client context (TLS 1.2+, certificates verified). ``ConfigError`` if a file
        is missing or unreadable."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = self.check_hostname
            ctx.verify_mode = ssl.CERT_REQUIRED
            if self.cert_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"cannot load the TLS files ({type(exc).__name__}: {why})") from None
        return ctx


def _satisfies(level: str, counts: Sequence[int], rfs: Sequence[int], local: int) -> bool:
    """Do ``counts`` acknowledging replicas per data centre (``rfs`` replicas each; index
    ``local`` is the local one) satisfy consistency ``level``?"""
    total = sum(counts)
    if level == "ANY":
        return True  # a hint anywhere: no replica at all
    if level == "EACH_QUORUM":
        return all(c >= rf // 2 + 1 for c, rf in zip(counts, rfs))
    if level in ("LOCAL_ONE", "LOCAL_QUORUM", "LOCAL_SERIAL"):
        need = 1 if level == "LOCAL_ONE" else rfs[local] // 2 + 1
        return counts[local] >= need
    need = {
        "ONE": 1,
        "TWO": 2,
        "THREE": 3,
        "QUORUM": sum(rfs) // 2 + 1,
        "SERIAL": sum(rfs) // 2 + 1,
        "ALL": sum(rfs),
    }[level]
    return total >= need


def consistency_overlap(write: str, read: str, rfs: Sequence[int], local: int = 0) -> str | None:
    """Why ``write``/``read`` do not guarantee that every read sees every acknowledged write,
    for replication factors ``rfs`` per data centre (``local``: the driver's DC), or None when
    they do. Exact: it looks for a set of replicas that acknowledges a write and a disjoint set
    that answers a read (over acknowledgement counts per data centre)."""
    import itertools

    vectors = list(itertools.product(*(range(rf + 1) for rf in rfs)))
    for name, level in (("write", write), ("read", read)):
        if not any(_satisfies(level, v, rfs, local) for v in vectors):
            return f"{name} consistency {level} can never be met with replication {list(rfs)}"
    for w in vectors:
        if not _satisfies(write, w, rfs, local):
            continue
        rest = [rf - c for rf, c in zip(rfs, w)]
        if _satisfies(read, rest, rfs, local):  # monotone: all the others, or none will do
            return (
                f"read consistency {read} and write consistency {write} do not overlap "
                f"with replication {list(rfs)}: a read could miss an acknowledged event "
                "(need R + W > RF, e.g. LOCAL_QUORUM for both)"
            )
    return None


@dataclass(frozen=True)
class CassandraConfig:
    """Where and how to reach Cassandra, and how the journal lays out its tables.

    Defaults (a development node; production sets replication, ``local_dc``, auth and TLS):

    * ``contact_points`` ("127.0.0.1",) and ``port`` 9042: give several contact points in
      production (any one answering is enough to discover the ring).
    * replication: ``replication_strategy`` "SimpleStrategy" with ``replication_factor`` 1, or
      "NetworkTopologyStrategy" with ``datacenters`` {dc: rf} (used when creating the keyspace,
      and to check the consistency levels below).
    * ``local_dc``: the driver's local data centre. Required with NetworkTopologyStrategy when
      several data centres are named (LOCAL_QUORUM/LOCAL_SERIAL are per data centre, so every
      coordinator must be in the same one); with one data centre it defaults to that one. Must
      be one of ``datacenters``.
    * consistency: ``write_consistency``/``read_consistency`` (default LOCAL_QUORUM) must
      overlap for the replication factor (a read must see every acknowledged write:
      R + W > RF, counted in the local data centre or over all replicas), else ``ConfigError``;
      ``serial_consistency`` for the fencing guard's conditional batches (default
      LOCAL_SERIAL).
    * ``username``/``password`` (PasswordAuthenticator), or ``password_file`` (read by each
      process when it connects, so only the path travels to Ray hosts). Never in the repr.
    * ``tls``: :class:`TlsSettings` (client-to-node TLS, picklable). ``ssl_context`` is the
      older form: it works in one process, but a config carrying it cannot be sent to Ray hosts
      (pickling it raises ``ConfigError``; use ``tls``).
    * timeouts: ``request_timeout`` 10 s, ``connect_timeout`` 10 s; ``reconnect_max_delay``
      10 s bounds the driver's exponential reconnection back-off (the driver's default grows to
      600 s, so a node back after a long outage was not used again for up to 10 minutes).
    * ``partition_size``: events per (persistence id, partition) — bounds partition size; an
      atomic group may not contain more events than this (default 5000).
    * ``guard``: how the single writer is guarded in the store (see
      ``raysource.journal.cassandra.epochs``): "epoch" (default: one conditional claim per
      activation on a fence row, plain appends, a fence read before each acknowledgement),
      "per-append" (every append a conditional batch, a Paxos round each) or "off" (plain
      appends, no guard). ``fencing=False`` is the older spelling of "off" and wins over
      ``guard``; :attr:`effective_guard` is what the journal uses.
    * ``events_table``: the events table, keyed ``((persistence_id, partition_nr),
      sequence_nr, epoch)`` ("messages_v2"); ``legacy_events_table`` ("messages") is the
      table of keyspaces written before the epoch key, which ``raysource schema migrate``
      copies into it (rows become epoch 0).
    * ``eventual_consistency_delay``: seconds the tag query stays behind "now" (default 5; see
      ``raysource.journal.cassandra.journal``); ``tag_write_budget`` must be smaller (default:
      half of it).
    * ``max_payload_bytes``: the serializer's limit (passed on by the runtime), default 1 MB.
    * ``shared_write_partitions`` (default 10) and ``shared_write_bytes`` (default 4096): the
      epoch guard (and guard "off") sends the event batches of many aggregates, asked for in
      one event-loop step of a host, as one unlogged batch of at most this many partitions
      and about this many bytes of row data (``raysource.journal.cassandra.shared_writes``).
      Cassandra warns about unlogged batches over
      ``unlogged_batch_across_partitions_warn_threshold`` (default 10) partitions or
      ``batch_size_warn_threshold`` (default 5 KiB); raise these with those.
      ``shared_write_partitions=1``: one request per append.
    * ``key_wrapper``: a :class:`~raysource.journal.kms.KeyWrapper` (a KMS adapter, or
      :class:`~raysource.journal.kms.LocalKeyWrapper`): the data subjects' keys are stored
      wrapped by it (default None: stored as they are). Not in the repr.
    """

    contact_points: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    local_dc: str | None = None
    keyspace: str = "raysource"
    replication_strategy: str = "SimpleStrategy"
    replication_factor: int = 1
    datacenters: Mapping[str, int] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    tls: TlsSettings | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    write_consistency: str = "LOCAL_QUORUM"
    read_consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    partition_size: int = 5000
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    reconnect_max_delay: float = 10.0
    fencing: bool = True
    guard: str = "epoch"
    max_payload_bytes: int = 1_000_000
    fetch_size: int = 1000
    events_table: str = "messages_v2"
    legacy_events_table: str = "messages"
    fence_table: str = "writer_fence"
    epochs_table: str = "writer_epochs"
    metadata_table: str = "metadata"
    tag_table: str = "tag_views"
    tag_metadata_table: str = "tag_metadata"
    snapshots_table: str = "snapshots"
    eventual_consistency_delay: float = 5.0
    tag_write_budget: float | None = None
    executor_threads: int = 2
    protocol_version: int | None = None
    shared_write_partitions: int = 10
    shared_write_bytes: int = 4096
    key_wrapper: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key_wrapper is not None:
            from raysource.journal.kms import KeyWrapper

            if not isinstance(self.key_wrapper, KeyWrapper):
                raise ConfigError(f"key_wrapper must be a KeyWrapper, got {self.key_wrapper!r}")
        if isinstance(self.contact_points, str):
            object.__setattr__(self, "contact_points", (self.contact_points,))
        object.__setattr__(self, "contact_points", tuple(self.contact_points))
        if not self.contact_points or not all(
            isinstance(c, str) and c.strip() for c in self.contact_points
        ):
            raise ConfigError(
                f"contact_points must be non-empty host names: {self.contact_points!r}"
            )
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ConfigError(f"invalid port {self.port!r}")
        validate_identifier(self.keyspace, "keyspace")
        for t in (
            self.events_table,
            self.metadata_table,
            self.tag_table,
            self.tag_metadata_table,
            self.snapshots_table,
            self.legacy_events_table,
            self.fence_table,
            self.epochs_table,
        ):
            validate_identifier(t, "table name")
        if self.guard not in GUARDS:
            raise ConfigError(f"guard must be one of {GUARDS}, got {self.guard!r}")
        self._check_replication()
        for name in ("write_consistency", "read_consistency"):
            if getattr(self, name) not in CONSISTENCY_NAMES:
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}")
        if self.serial_consistency not in ("SERIAL", "LOCAL_SERIAL"):
            raise ConfigError(
                f"serial_consistency must be SERIAL or LOCAL_SERIAL, got "
                f"{self.serial_consistency!r}"
            )
        self._check_consistency()
        if not (isinstance(self.partition_size, int) and self.partition_size >= 1):
            raise ConfigError(f"partition_size must be an int >= 1, got {self.partition_size!r}")
        for name in ("request_timeout", "connect_timeout", "reconnect_max_delay"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.fetch_size < 1 or self.executor_threads < 1 or self.max_payload_bytes < 1:
            raise ConfigError("fetch_size, executor_threads and max_payload_bytes must be >= 1")
        for name in ("shared_write_partitions", "shared_write_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.eventual_consistency_delay <= 0:
            raise ConfigError("eventual_consistency_delay must be > 0")
        budget = self.tag_budget
        if not 0 < budget < self.eventual_consistency_delay:
            raise ConfigError("tag_write_budget must be > 0 and < eventual_consistency_delay")
        if self.password is not None and self.password_file is not None:
            raise ConfigError("give password or password_file, not both")
        if (self.username is None) != (self.password is None and self.password_file is None):
            raise ConfigError("username and password (or password_file) go together")
        if self.tls is not None and self.ssl_context is not None:
            raise ConfigError("give tls or ssl_context, not both")
        if self.tls is not None and not isinstance(self.tls, TlsSettings):
            raise ConfigError(f"tls must be TlsSettings, got {type(self.tls).__name__}")

    def _check_replication(self) -> None:
        if self.replication_strategy not in ("SimpleStrategy", "NetworkTopologyStrategy"):
            raise ConfigError(f"unknown replication strategy {self.replication_strategy!r}")
        if self.replication_strategy == "SimpleStrategy":
            if not (isinstance(self.replication_factor, int) and self.replication_factor >= 1):
                raise ConfigError(f"invalid replication_factor {self.replication_factor!r}")
            return
        if not self.datacenters:
            raise ConfigError("NetworkTopologyStrategy needs datacenters={dc: rf}")
        for dc, rf in self.datacenters.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", dc) or not (
                isinstance(rf, int) and rf >= 1
            ):
                raise ConfigError(f"invalid datacenter replication {dc!r}: {rf!r}")
        if self.local_dc is None:
            if len(self.datacenters) > 1:
                raise ConfigError(
                    "NetworkTopologyStrategy with several data centres needs local_dc (LOCAL_* "
                    f"consistency is per data centre): one of {sorted(self.datacenters)}"
                )
            object.__setattr__(self, "local_dc", next(iter(self.datacenters)))
        elif self.local_dc not in self.datacenters:
            raise ConfigError(
                f"local_dc {self.local_dc!r} is not one of the keyspace's data "
                f"centres {sorted(self.datacenters)}"
            )

    def _check_consistency(self) -> None:
        if self.read_consistency == "ANY":
            raise ConfigError("read_consistency ANY is not a read level")
        if self.replication_strategy == "SimpleStrategy":
            rfs, local = [self.replication_factor], 0
        else:
            dcs = list(self.datacenters)
            assert self.local_dc is not None  # _check_replication required it
            rfs, local = [self.datacenters[d] for d in dcs], dcs.index(self.local_dc)
        problem = consistency_overlap(self.write_consistency, self.read_consistency, rfs, local)
        if problem is not None:
            raise ConfigError(problem)

    @property
    def effective_guard(self) -> str:
        """The guard the journal uses: "off" when ``fencing`` is False, else ``guard``."""
        return "off" if not self.fencing else self.guard

    @property
    def tag_budget(self) -> float:
        if self.tag_write_budget is not None:
            return self.tag_write_budget
        return self.eventual_consistency_delay / 2

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) for the driver's auth provider, reading ``password_file`` now
        (in the process that connects). ``ConfigError`` if the file cannot be read."""
        if self.username is None:
            return None
        if self.password_file is not None:
            try:
                password = Path(self.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the Cassandra password file "
                    f"{self.password_file!r}: {exc.strerror}"
                ) from None
            return self.username, password
        return self.username, self.password  # type: ignore[return-value]

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context this process connects with (built from ``tls``), or None."""
        if self.tls is not None:
            return self.tls.ssl_context()
        return self.ssl_context

    def __getstate__(self) -> dict[str, Any]:
        if self.ssl_context is not None:
            raise ConfigError(
                "a CassandraConfig with ssl_context cannot be sent to another "
                "process (an SSLContext cannot be pickled): give "
                "tls=TlsSettings(ca_file=..., ...) instead"
            )
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_contact(cls, contact: str | tuple[str, int], **kwargs: Any) -> CassandraConfig:
        """Build a config from ``"host:port"``, ``"h1,h2,h3:port"`` (several contact points,
        one port) or a ``(host, port)`` tuple, plus overrides."""
        hosts: tuple[str, ...]
        if isinstance(contact, tuple):
            hosts, port = (contact[0],), contact[1]
        else:
            text = contact.strip()
            host_part, sep, port_s = text.rpartition(":")
            if not sep or "]" in port_s:
                host_part, port_s = text, "9042"
            try:
                port = int(port_s)
            except ValueError:
                raise ConfigError(f"invalid contact point {contact!r}") from None
            hosts = tuple(h.strip().strip("[]") for h in host_part.split(","))
        if not hosts or not all(h and re.fullmatch(r"[A-Za-z0-9_.:\-]+", h) for h in hosts):
            raise ConfigError(f"invalid contact point {contact!r}; expected host[,host...]:port")
        return cls(contact_points=hosts, port=int(port), **kwargs)

    @classmethod
    def from_env(
        cls, contact: str | None = None, *, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> CassandraConfig:
        """A config from the ``RAYSOURCE_CASSANDRA*`` variables (see the module docstring):
        ``contact`` wins over ``RAYSOURCE_CASSANDRA``; ``kwargs`` over everything."""
        env = os.environ if environ is None else environ
        contact = contact or env.get(_ENV) or "127.0.0.1:9042"
        settings: dict[str, Any] = {}
        if env.get(f"{_ENV}_USERNAME"):
            settings["username"] = env[f"{_ENV}_USERNAME"]
            if env.get(f"{_ENV}_PASSWORD_FILE"):
                settings["password_file"] = env[f"{_ENV}_PASSWORD_FILE"]
            elif f"{_ENV}_PASSWORD" in env:
                settings["password"] = env[f"{_ENV}_PASSWORD"]
            else:
                raise ConfigError(
                    f"{_ENV}_USERNAME is set but neither {_ENV}_PASSWORD_FILE nor {_ENV}_PASSWORD"
                )
        if env.get(f"{_ENV}_TLS_CA") or env.get(f"{_ENV}_TLS_CERT"):
            check = env.get(f"{_ENV}_TLS_CHECK_HOSTNAME", "1").strip().lower()
            settings["tls"] = TlsSettings(
                ca_file=env.get(f"{_ENV}_TLS_CA") or None,
                cert_file=env.get(f"{_ENV}_TLS_CERT") or None,
                key_file=env.get(f"{_ENV}_TLS_KEY") or None,
                check_hostname=check not in ("0", "false", "no", "off"),
            )
        if env.get(f"{_ENV}_LOCAL_DC"):
            settings["local_dc"] = env[f"{_ENV}_LOCAL_DC"]
        settings.update(kwargs)
        return cls.from_contact(contact, **settings)

    def with_(self, **changes: Any) -> CassandraConfig:
        return replace(self, **changes)
