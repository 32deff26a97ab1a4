"""The read side (CQRS): event streams, tag slices, and the projection worker.

No Ray here (the Ray actor and the control API are in ``raysource.readside.projection_actor``).

Event streams (:class:`EventStreams`)
-------------------------------------
* ``current_events_by_tag(tag, after)`` — what is visible now, then completes;
* ``events_by_tag(tag, after)`` — live: re-runs the current query from the last offset every
  ``poll_interval`` seconds, so a new event shows up within ``eventual_consistency_delay +
  poll_interval`` (the raysource.journal's tag-visibility delay, see
  ``raysource.journal.cassandra.journal``);
* ``events_by_persistence_id(pid, from_sequence_nr)`` — one aggregate's events in order.

Every element is an :class:`EventEnvelope` (decoded event, persistence id, sequence number,
offset, timestamp). Offsets are :class:`~raysource.journal.api.TagOffset` values: totally ordered
per tag, and serializable with :func:`offset_to_str` / :func:`offset_from_str`. The journal delivers
at least once (a slow tag write is re-written with a later offset); streams drop a delivery whose
sequence number is not above the last one seen for its persistence id (per-id order is the
journal's order, so this is exact while the id is remembered; ``dedupe_capacity`` ids are kept,
least recently used first out).

Slices
------
A tag is split into ``n_slices`` fixed slices by a stable hash of the persistence id
(:func:`slice_of`, BLAKE2b-64 mod n, the same definition as the shard hash). A projection runs
one worker per slice, so every persistence id belongs to exactly one worker and its order is
kept. The split happens at read time (a tagger only sees the event, not its persistence id, so
it cannot write per-slice tags). The tag is read once for all slices: slice 0 reads it and
feeds the other slices their events (:mod:`raysource.readside.slices`); ``EventStreams``'s
``slices=`` filter is for a reader of its own. The slice count is part of a projection's
stored identity (offsets are stored per ``"<slice>/<n>"``); changing it starts fresh offsets.

The projection worker
---------------------
:class:`~raysource.readside.worker.ProjectionWorker` runs one slice of a projection (offsets,
batches, the live path, parked aggregate streams); the offset store SPI is
:mod:`raysource.readside.offsets`; ``verify`` is :mod:`raysource.readside.verify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from raysource.journal.api import Journal, TaggedEvent, TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import ConfigError
from raysource.journal.keyring import KeyRing
from raysource.journal.personal import SubjectForgotten
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType

__all__ = [
    "EventEnvelope",
    "EventStreams",
    "ProjectionHandler",
    "ProjectionSettings",
    "ProjectionSpec",
    "offset_from_str",
    "offset_to_str",
    "slice_of",
    "worker_key",
]

log = logging.getLogger(__name__)

WorkerState = Literal["idle", "running", "paused", "parked", "stopped"]
_STORE_ERROR = "journal/offset store unavailable, retrying: "
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def slice_of(persistence_id: str, n_slices: int) -> int:
    """The slice (``0 <= slice < n_slices``) of ``persistence_id``: 8-byte BLAKE2b of the
    UTF-8 id, big-endian, mod ``n_slices``. Stable across processes and runs."""
    if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
        raise ConfigError(f"n_slices must be an int >= 1, got {n_slices!r}")
    digest = hashlib.blake2b(persistence_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_slices


def worker_key(slice_index: int, n_slices: int) -> str:
    """The stored identity of one worker of a projection: ``"<slice>/<n_slices>"``."""
    return f"{slice_index}/{n_slices}"


def offset_to_str(offset: TagOffset | None) -> str:
    """``"start"`` or ``"<timestamp_us>:<sequence_nr>:<persistence_id>"``."""
    if offset is None or offset == TagOffset.start():
        return "start"
    return f"{offset.timestamp_us}:{offset.sequence_nr}:{offset.persistence_id}"


def offset_from_str(text: str) -> TagOffset | None:
    """Inverse of :func:`offset_to_str` (``None`` for ``"start"``)."""
    if text.strip() == "start":
        return None
    try:
        ts, seq, pid = text.split(":", 2)
        return TagOffset(int(ts), pid, int(seq))
    except ValueError as exc:
        raise ConfigError(f"not an offset: {text!r} (want 'start' or 'TS_US:SEQ:PID')") from exc


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One decoded event from a stream. ``offset``/``tag`` are None for a by-id stream;
    ``timestamp`` is the writer's clock when the event was created (UTC)."""

    event: Any
    persistence_id: str
    sequence_nr: int
    timestamp: datetime
    offset: TagOffset | None = None
    tag: str | None = None


class _Dedupe:
    """Per persistence id, the highest sequence number seen (LRU-bounded)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._last: OrderedDict[str, int] = OrderedDict()

    def last(self, pid: str) -> int | None:
        """The highest sequence number seen for ``pid`` (None: not remembered)."""
        return self._last.get(pid)

    def is_duplicate(self, pid: str, seq: int) -> bool:
        last = self._last.get(pid)
        return last is not None and seq <= last

    def mark(self, pid: str, seq: int) -> None:
        self._last[pid] = max(seq, self._last.get(pid, 0))
        self._last.move_to_end(pid)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def clear(self) -> None:
        self._last.clear()


def _decode(serialization: Serialization, te: TaggedEvent) -> EventEnvelope:
    e = te.event
    obj = serialization.decode(
        e.serializer_id,
        e.manifest,
        bytes(e.payload),
        persistence_id=e.persistence_id,
        sequence_nr=e.sequence_nr,
    )
    return EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp, te.offset, te.tag)


class EventStreams:
    """Query side of a journal: decoded, deduplicated event streams (see module docstring).

    ``slices`` (optional) on the tag queries is ``(slice_indexes, n_slices)``: keep only events
    whose persistence id falls in one of those slices.
    """

    def __init__(
        self,
        journal: Journal,
        serialization: Serialization,
        *,
        poll_interval: float = 0.5,
        dedupe_capacity: int = 100_000,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigError("poll_interval must be > 0")
        self.journal = journal
        self.serialization = serialization
        self.poll_interval = poll_interval
        self.dedupe_capacity = dedupe_capacity

    async def current_events_by_tag(
        self,
        tag: str,
        after: TagOffset | None = None,
        *,
        slices: tuple[Iterable[int], int] | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Events tagged ``tag`` strictly after ``after`` that are visible now; completes."""
        dedupe = _Dedupe(self.dedupe_capacity)
        keep = _slice_filter(slices)
        async with contextlib.aclosing(self.journal.events_by_tag(tag, after)) as rows:
            async for te in rows:
                pid, seq = te.event.persistence_id, te.event.sequence_nr
                if not keep(pid) or dedupe.is_duplicate(pid, seq):
                    continue
                dedupe.mark(pid, seq)
                yield _decode(self.serialization, te)

    async def events_by_tag(
        self,
        tag: str,
        after: TagOffset | None = None,
        *,
        slices: tuple[Iterable[int], int] | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Live: every event tagged ``tag`` after ``after``, following new ones; never
        completes (close the iterator to stop)."""
        dedupe = _Dedupe(self.dedupe_capacity)
        keep = _slice_filter(slices)
        while True:
            async with contextlib.aclosing(self.journal.events_by_tag(tag, after)) as rows:
                async for te in rows:
                    after = te.offset
                    pid, seq = te.event.persistence_id, te.event.sequence_nr
                    if not keep(pid) or dedupe.is_duplicate(pid, seq):
                        continue
                    dedupe.mark(pid, seq)
                    yield _decode(self.serialization, te)
            await asyncio.sleep(self.poll_interval)

    async def events_by_persistence_id(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Events of one aggregate, ascending from ``from_sequence_nr``; completes."""
        async with contextlib.aclosing(
            self.journal.replay(persistence_id, from_sequence_nr, to_sequence_nr)
        ) as rows:
            async for e in rows:
                obj = self.serialization.decode(
                    e.serializer_id,
                    e.manifest,
                    bytes(e.payload),
                    persistence_id=e.persistence_id,
                    sequence_nr=e.sequence_nr,
                )
                yield EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp)


def _slice_filter(slices: tuple[Iterable[int], int] | None) -> Callable[[str], bool]:
    if slices is None:
        return lambda pid: True
    wanted, n = frozenset(slices[0]), slices[1]
    return lambda pid: slice_of(pid, n) in wanted


# --------------------------------------------------------------------------- user API


class ProjectionHandler:
    """What a projection runs (subclass it; ``handle`` or ``handle_batch`` is required).

    Events arrive in offset order per persistence id, at least once each (see
    :mod:`raysource.readside.worker`). A handler that only defines ``handle`` gets one event
    at a time; one that defines ``handle_batch`` gets runs of events (up to
    ``ProjectionSettings.batch_size``, several aggregates interleaved, each aggregate's events
    in order) and must be idempotent: after a failed batch its events are delivered again one
    by one, to find the poison event (``EffectivelyOnceView.apply_batch`` is idempotent).
    Raising retries; after the last attempt the event's aggregate stream is parked.
    """

    async def global_prepare(self) -> None:
        """Once per projection start, before any worker handles events (create tables)."""

    async def prepare(self) -> None:
        """Once per worker activation, and again after a reset (load state, prepare CQL)."""

    def handle(self, envelope: EventEnvelope) -> Any:
        raise NotImplementedError

    async def handle_batch(self, envelopes: list[EventEnvelope]) -> None:
        """Handle a run of events (default: ``handle`` each, in order)."""
        for env in envelopes:
            result = self.handle(env)
            if inspect.isawaitable(result):
                await result

    async def on_reset(self, offset: TagOffset | None) -> None:
        """The worker was reset to ``offset`` (None: the start); events after it will be
        delivered again. A view that should be rebuilt clears its tables here."""

    async def on_subject_forgotten(self, signal: SubjectForgotten) -> None:
        """``signal.subject`` was forgotten (its key destroyed): scrub the personal data the
        view keeps of it (e.g. set it to :data:`~raysource.journal.personal.FORGOTTEN`).
        Called by ``raysource forget`` (its process, after ``prepare``), effectively once per
        view and subject: it may run again after a crash, so it must be idempotent. Events
        delivered later already carry the placeholder."""

    async def side_effect(self, envelope: EventEnvelope) -> None:
        """An effect outside the view (an email, a call out) for an applied event: override it
        to declare one. Run only while this version is live, at most once per event across
        versions and redeliveries (:mod:`raysource.readside.effects`)."""

    async def applied_marks(self) -> dict[str, int] | None:
        """Per persistence id, the last sequence number the view applied (an
        ``EffectivelyOnceView``'s watermarks); None if this handler does not know. Lets
        ``projection switch`` verify a version exactly while events keep arriving."""
        return None

    async def drop(self) -> None:
        """Remove the view's tables (``projection drop`` of a version no longer live)."""

    async def verify(
        self, events: list[EventEnvelope], marks: Mapping[str, int] | None = None
    ) -> list[str] | None:
        """Check the view against ``events`` (every stored event of the tag, per persistence
        id in order): one line per problem (a missing or unexpected row, an event applied
        twice or not at all); ``[]`` when complete; None if this handler cannot verify.
        ``marks``: persistence id -> retention mark, for the aggregates whose events at or
        below it retention deleted (they are not in ``events``: a row they made is neither
        expected nor unexpected; see :mod:`raysource.readside.verify`)."""
        return None


def batches_events(handler: ProjectionHandler) -> bool:
    """True if ``handler`` overrides ``handle_batch`` (it takes runs of events)."""
    return type(handler).handle_batch is not ProjectionHandler.handle_batch


HandlerFactory = Callable[[CassandraSession, CassandraConfig], ProjectionHandler]


@dataclass(frozen=True)
class ProjectionSettings:
    """Tuning of one projection (defaults suit production; tests shorten them)."""

    poll_interval: float = 0.5
    commit_every: int = 50
    commit_interval: float = 1.0
    retry_attempts: int = 3
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0
    dedupe_capacity: int = 100_000
    lag_scan_limit: int = 100_000
    batch_size: int = 500  # events per handle_batch call (handlers that take batches)
    live: bool = True  # apply events offered by writers at once (see raysource.readside.live)
    live_buffer: int = 10_000  # live events waiting to be applied (oldest dropped beyond)

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.commit_interval <= 0:
            raise ConfigError("poll_interval and commit_interval must be > 0")
        if (
            self.commit_every < 1
            or self.retry_attempts < 1
            or self.batch_size < 1
            or self.live_buffer < 1
        ):
            raise ConfigError(
                "commit_every, retry_attempts, batch_size and live_buffer must be >= 1"
            )
        if self.retry_backoff < 0 or self.retry_backoff_max < 0:
            raise ConfigError("retry backoff must be >= 0")


@dataclass(frozen=True)
class ProjectionSpec:
    """A projection: its ``name`` (stored identity), the ``tag`` it reads, how many slices
    (workers) it runs, the handler factory ``(session, config) -> ProjectionHandler`` (called
    in each worker's process; must be picklable), and the aggregate types whose events it
    decodes. Picklable as a whole."""

    name: str
    tag: str
    handler_factory: HandlerFactory
    aggregate_types: tuple[AggregateType, ...]
    n_slices: int = 1
    settings: ProjectionSettings = field(default_factory=ProjectionSettings)
    num_cpus: float = 0.01

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS or len(self.name) > 100:
            raise ConfigError(f"invalid projection name {self.name!r}: use [A-Za-z0-9_.-]")
        if not self.tag:
            raise ConfigError("a projection needs a tag")
        slice_of("", self.n_slices)
        object.__setattr__(self, "aggregate_types", tuple(self.aggregate_types))

    def serialization(self, keys: KeyRing | None = None) -> Serialization:
        """The serializer of the projection's event types (``keys``: the key ring of personal
        fields; the workers pass the Cassandra key store of their keyspace)."""
        ser = Serialization(keys=keys)
        for t in self.aggregate_types:
            t.register_types(ser)
        return ser

    def worker_keys(self) -> list[str]:
        return [worker_key(i, self.n_slices) for i in range(self.n_slices)]
