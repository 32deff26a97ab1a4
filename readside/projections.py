"""The read side (CQRS): event streams, tag slices, and the projection worker.

No Ray here (the Ray actor and the control API are in ``raysource.readside.projection_actor``).

Event streams (:class:`EventStreams`)
-------------------------------------
* ``current_events_by_tag(tag, after)`` — what is visible now, then completes;
* ``events_by_tag(tag, after)`` — live: re-runs the current query from the last offset every
  ``poll_interval`` seconds, so a new event shows up within ``eventual_consistency_delay +
  poll_interval`` (the raysource.journal's tag-visibility delay, see ``raysource.journal.cassandra.journal``);
* ``events_by_persistence_id(pid, from_sequence_nr)`` — one aggregate's events in order.

Every element is an :class:`EventEnvelope` (decoded event, persistence id, sequence number,
offset, timestamp). Offsets are :class:`~raysource.journal.api.TagOffset` values: totally ordered per tag,
and serializable with :func:`offset_to_str` / :func:`offset_from_str`. The journal delivers at
least once (a slow tag write is re-written with a later offset); streams drop a delivery whose
sequence number is not above the last one seen for its persistence id (per-id order is the
journal's order, so this is exact while the id is remembered; ``dedupe_capacity`` ids are kept,
least recently used first out).

Slices
------
A tag is split into ``n_slices`` fixed slices by a stable hash of the persistence id
(:func:`slice_of`, BLAKE2b-64 mod n, the same definition as the shard hash). A projection runs
one worker per slice; each reads the tag and keeps its own slice's events, so every persistence
id belongs to exactly one worker and its order is kept. The filter runs at read time because a
tagger only sees the event, not its persistence id, so it cannot write per-slice tags; the cost
is that each worker reads the whole tag (n reads of the tag for n slices). The slice count is
part of a projection's stored identity (offsets are stored per ``"<slice>/<n>"``); changing it
starts fresh offsets.

The projection worker (:class:`ProjectionWorker`)
------------------------------------------------
Lifecycle like Lagom's ReadSideProcessor, on a user :class:`ProjectionHandler`:
``global_prepare()`` once per start of the projection (create tables), ``prepare()`` once per
worker activation and after a reset (load state, prepare statements), then ``handle(envelope)``
for every event of the worker's slice, one at a time, in offset order.

Delivery is at-least-once: the offset (table ``projection_offsets``, created on demand) is stored
after the handled events, every ``commit_every`` events or ``commit_interval`` seconds and when
the stream is drained; after a crash the worker resumes strictly after the stored offset, so up
to ``commit_every`` events are delivered again (make the handler idempotent, e.g. with
``raysource.readside.views.EffectivelyOnceView``).

A handler error is retried ``retry_attempts`` times in total with exponential backoff; then the
worker *parks*: it stores the offset just before the failed event, records the error (visible in
``status``) and stops. It never skips the event: ``resume`` delivers it again first. A failing
journal or offset store is not the handler's fault: the worker keeps running, shows the error
in ``status`` and retries the read with backoff until the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from raysource.journal.api import Journal, TaggedEvent, TagOffset
from raysource.journal.cassandra.config import CassandraConfig, validate_identifier
from raysource.journal.errors import ConfigError, JournalError
from raysource.journal.serialization import Serialization
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.metrics import Metrics

__all__ = [
    "EventEnvelope",
    "EventStreams",
    "OffsetStore",
    "ProjectionHandler",
    "ProjectionSettings",
    "ProjectionSpec",
    "ProjectionWorker",
    "StoredProjectionRow",
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

    def is_duplicate(self, pid: str, seq: int) -> bool:
        last = self._last.get(pid)
        return last is not None and seq <= last

    def mark(self, pid: str, seq: int) -> None:
        self._last[pid] = seq
        self._last.move_to_end(pid)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def clear(self) -> None:
        self._last.clear()


def _decode(serialization: Serialization, te: TaggedEvent) -> EventEnvelope:
    e = te.event
    obj = serialization.decode(e.serializer_id, e.manifest, bytes(e.payload),
                               persistence_id=e.persistence_id, sequence_nr=e.sequence_nr)
    return EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp, te.offset, te.tag)


class EventStreams:
    """Query side of a journal: decoded, deduplicated event streams (see module docstring).

    ``slices`` (optional) on the tag queries is ``(slice_indexes, n_slices)``: keep only events
    whose persistence id falls in one of those slices.
    """

    def __init__(self, journal: Journal, serialization: Serialization, *,
                 poll_interval: float = 0.5, dedupe_capacity: int = 100_000) -> None:
        if poll_interval <= 0:
            raise ConfigError("poll_interval must be > 0")
        self.journal = journal
        self.serialization = serialization
        self.poll_interval = poll_interval
        self.dedupe_capacity = dedupe_capacity

    async def current_events_by_tag(
        self, tag: str, after: TagOffset | None = None, *,
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
        self, tag: str, after: TagOffset | None = None, *,
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
        self, persistence_id: str, from_sequence_nr: int = 1, to_sequence_nr: int | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Events of one aggregate, ascending from ``from_sequence_nr``; completes."""
        async with contextlib.aclosing(
            self.journal.replay(persistence_id, from_sequence_nr, to_sequence_nr)
        ) as rows:
            async for e in rows:
                obj = self.serialization.decode(e.serializer_id, e.manifest, bytes(e.payload),
                                                persistence_id=e.persistence_id,
                                                sequence_nr=e.sequence_nr)
                yield EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp)


def _slice_filter(slices: tuple[Iterable[int], int] | None) -> Callable[[str], bool]:
    if slices is None:
        return lambda pid: True
    wanted, n = frozenset(slices[0]), slices[1]
    return lambda pid: slice_of(pid, n) in wanted


# --------------------------------------------------------------------------- user API


class ProjectionHandler:
    """What a projection runs (subclass it; only ``handle`` is required).

    ``handle`` may be a plain function or a coroutine; it is called one event at a time, in
    offset order, at least once per event (see the module docstring). Raising retries the same
    event, then parks the projection.
    """

    async def global_prepare(self) -> None:
        """Once per projection start, before any worker handles events (create tables)."""

    async def prepare(self) -> None:
        """Once per worker activation, and again after a reset (load state, prepare CQL)."""

    def handle(self, envelope: EventEnvelope) -> Any:
        raise NotImplementedError

    async def on_reset(self, offset: TagOffset | None) -> None:
        """The worker was reset to ``offset`` (None: the start); events after it will be
        delivered again. A view that should be rebuilt clears its tables here."""


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

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.commit_interval <= 0:
            raise ConfigError("poll_interval and commit_interval must be > 0")
        if self.commit_every < 1 or self.retry_attempts < 1:
            raise ConfigError("commit_every and retry_attempts must be >= 1")
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

    def serialization(self) -> Serialization:
        ser = Serialization()
        for t in self.aggregate_types:
            t.register_types(ser)
        return ser

    def worker_keys(self) -> list[str]:
        return [worker_key(i, self.n_slices) for i in range(self.n_slices)]


# --------------------------------------------------------------------------- offset store


@dataclass(frozen=True)
class StoredProjectionRow:
    """One worker's row of ``projection_offsets``: its offset, the state it should be in
    (``desired``: running/paused/stopped), the state it reported, and its last error."""

    projection: str
    worker: str
    offset: TagOffset | None
    desired: str
    state: str
    error: str
    updated_us: int


class OffsetStore:
    """``<keyspace>.projection_offsets``: one row per (projection, worker), created on demand.
    Columns are updated separately (offset, desired state, reported state) so writers of
    different columns never overwrite each other."""

    TABLE = "projection_offsets"

    def __init__(self, session: CassandraSession, keyspace: str) -> None:
        self.session = session
        self.table = f"{validate_identifier(keyspace, 'keyspace')}.{self.TABLE}"

    async def create_table(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (projection text, worker text, "
            "ts_us bigint, persistence_id text, sequence_nr bigint, desired text, state text, "
            "error text, updated_us bigint, PRIMARY KEY ((projection), worker))",
            prepare=False, timeout=60.0)

    async def load(self, projection: str, worker: str) -> StoredProjectionRow | None:
        rows = await self._select(projection, worker)
        return rows[0] if rows else None

    async def list(self, projection: str) -> list[StoredProjectionRow]:
        return await self._select(projection, None)

    async def _select(self, projection: str, worker: str | None) -> list[StoredProjectionRow]:
        cql = (f"SELECT projection, worker, ts_us, persistence_id, sequence_nr, desired, state, "
               f"error, updated_us FROM {self.table} WHERE projection = ?")
        params: tuple[Any, ...] = (projection,)
        if worker is not None:
            cql += " AND worker = ?"
            params += (worker,)
        out = []
        for r in await self.session.select_all(cql, params, profile=RAW_PROFILE):
            off = None if r[2] is None or r[2] == 0 and not r[3] else TagOffset(
                r[2], r[3] or "", r[4] or 0)
            out.append(StoredProjectionRow(r[0], r[1], off, r[5] or "", r[6] or "", r[7] or "",
                                           r[8] or 0))
        return out

    async def save_offset(self, projection: str, worker: str, offset: TagOffset | None) -> None:
        o = offset or TagOffset.start()
        await self.session.execute(
            f"UPDATE {self.table} SET ts_us = ?, persistence_id = ?, sequence_nr = ?, "
            f"updated_us = ? WHERE projection = ? AND worker = ?",
            (o.timestamp_us, o.persistence_id, o.sequence_nr, _now_us(), projection, worker))

    async def set_desired(self, projection: str, worker: str, desired: str) -> None:
        await self.session.execute(
            f"UPDATE {self.table} SET desired = ? WHERE projection = ? AND worker = ?",
            (desired, projection, worker))

    async def set_state(self, projection: str, worker: str, state: str, error: str) -> None:
        await self.session.execute(
            f"UPDATE {self.table} SET state = ?, error = ?, updated_us = ? "
            f"WHERE projection = ? AND worker = ?",
            (state, error, _now_us(), projection, worker))


def _now_us() -> int:
    return time.time_ns() // 1000


# --------------------------------------------------------------------------- the worker


class _Parked(Exception):
    pass


class ProjectionWorker:
    """Runs one slice of a projection in the current event loop (see the module docstring).

    Build it, ``await boot()`` (loads the offset; resumes if the stored desired state is
    "running"), then control it with ``start/pause/resume/stop/reset`` and read ``status()``.
    ``handler.prepare`` runs before the first event of each activation (after
    ``global_prepare``, which the controller runs first). A worker assumes it is the only one
    running its (projection, slice): the Ray actor name guarantees that.
    ``metrics`` gets the lag gauges each time :meth:`status` computes the lag.
    """

    def __init__(self, spec: ProjectionSpec, slice_index: int, session: CassandraSession,
                 config: CassandraConfig, journal: Journal,
                 metrics: Metrics | None = None) -> None:
        if not 0 <= slice_index < spec.n_slices:
            raise ConfigError(f"slice {slice_index} outside 0..{spec.n_slices - 1}")
        self.spec = spec
        self.slice_index = slice_index
        self.key = worker_key(slice_index, spec.n_slices)
        self.session = session
        self.config = config
        self.journal = journal
        self.serialization = spec.serialization()
        self.store = OffsetStore(session, config.keyspace)
        self.handler: ProjectionHandler = spec.handler_factory(session, config)
        self.settings = spec.settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.state: WorkerState = "idle"
        self.offset: TagOffset | None = None  # everything up to here is handled
        self.committed: TagOffset | None = None
        self.error = ""
        self.handled = 0
        self.duplicates_skipped = 0
        self.retries = 0
        self.last_event_timestamp: datetime | None = None
        self._dedupe = _Dedupe(self.settings.dedupe_capacity)
        self._task: asyncio.Task[None] | None = None
        self._halt = asyncio.Event()
        self._control = asyncio.Lock()
        self._prepared = False
        self._failed_at: tuple[str | None, int | None] = (None, None)  # for log context

    def _log_context(self) -> dict[str, Any]:
        """``extra`` for log records: the projection, the worker and the event it failed on."""
        pid, seq = self._failed_at
        return {"projection": self.spec.name, "worker": self.key, "persistence_id": pid,
                "sequence_nr": seq}

    def _mine(self, pid: str) -> bool:
        return self.spec.n_slices == 1 or slice_of(pid, self.spec.n_slices) == self.slice_index

    # ------------------------------------------------------------------ lifecycle

    async def global_prepare(self) -> None:
        await self.store.create_table()
        await self.handler.global_prepare()

    async def boot(self) -> None:
        await self.store.create_table()
        row = await self.store.load(self.spec.name, self.key)
        self.offset = self.committed = row.offset if row else None
        if row is not None and row.desired == "running":
            await self._start_loop()
        elif row is not None and row.desired == "paused":
            self.state = "paused"

    async def start(self) -> None:
        """Run (or keep running); also resumes a paused or parked worker."""
        async with self._control:
            await self.store.set_desired(self.spec.name, self.key, "running")
            await self._start_loop()

    resume = start

    async def pause(self) -> None:
        async with self._control:
            await self.store.set_desired(self.spec.name, self.key, "paused")
            await self._stop_loop("paused")

    async def stop(self) -> None:
        async with self._control:
            await self.store.set_desired(self.spec.name, self.key, "stopped")
            await self._stop_loop("stopped")

    async def reset(self, offset: TagOffset | None) -> None:
        """Move the offset to ``offset`` (None: the start) and deliver everything after it
        again (``handler.on_reset``, then ``prepare`` before the next event). Keeps the
        running state."""
        async with self._control:
            was_running = self._task is not None and not self._task.done()
            if self.state != "idle":
                await self._stop_loop("paused" if self.state in ("running", "parked")
                                      else self.state)
            if self.state == "parked":
                self.state = "paused"
            await self.store.save_offset(self.spec.name, self.key, offset)
            self.offset = self.committed = offset
            self._dedupe.clear()
            self.error = ""
            await self.handler.on_reset(offset)
            self._prepared = False
            if was_running:
                await self._start_loop()
            elif self.state != "idle":  # an idle (never booted) worker keeps the stored state
                await self.store.set_state(self.spec.name, self.key, self.state, "")

    async def _start_loop(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if not self._prepared:
            await self.handler.prepare()
            self._prepared = True
        self._halt.clear()
        self.error = ""
        self.state = "running"
        await self.store.set_state(self.spec.name, self.key, "running", "")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _stop_loop(self, state: WorkerState) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._halt.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), 30.0)
            except asyncio.TimeoutError:  # a handler that hangs: give up on it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.state != "parked" or state == "stopped":
            self.state = state
        await self._commit()
        await self.store.set_state(self.spec.name, self.key, self.state, self.error)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        s = self.settings
        failures = 0
        try:
            while not self._halt.is_set():
                try:
                    if not await self._pass():
                        return  # halted during a retry: redeliver after resume
                    failures = 0
                    if self.error.startswith(_STORE_ERROR):
                        self.error = ""
                    delay = s.poll_interval
                except JournalError as exc:  # journal or offset store: not the handler's fault
                    failures += 1
                    self.error = f"{_STORE_ERROR}{type(exc).__name__}: {exc}"
                    log.warning("projection %s %s: %s", self.spec.name, self.key, self.error)
                    delay = min(s.retry_backoff * 2 ** min(failures, 20), s.retry_backoff_max)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), delay)
        except _Parked:
            log.error("projection %s %s parked: %s", self.spec.name, self.key, self.error,
                      extra=self._log_context())
            await self._commit()
            self.state = "parked"
            await self.store.set_state(self.spec.name, self.key, "parked", self.error)
        except Exception as exc:  # a bug, not an outage: park, visibly
            log.exception("projection %s %s failed, parked", self.spec.name, self.key,
                          extra=self._log_context())
            self.error = f"worker failed: {type(exc).__name__}: {exc}"
            self.state = "parked"
            with contextlib.suppress(Exception):
                await self.store.set_state(self.spec.name, self.key, "parked", self.error)

    async def _pass(self) -> bool:
        """One current query from the handled offset, then commit. False if halted during a
        retry (the event stays unhandled)."""
        s = self.settings
        pending, last_commit = 0, time.monotonic()
        async with contextlib.aclosing(
            self.journal.events_by_tag(self.spec.tag, self.offset)
        ) as rows:
            async for te in rows:
                if self._halt.is_set():
                    break
                pid, seq = te.event.persistence_id, te.event.sequence_nr
                if self._mine(pid):
                    if self._dedupe.is_duplicate(pid, seq):
                        self.duplicates_skipped += 1
                    elif not await self._handle(te):
                        return False
                    else:
                        self._dedupe.mark(pid, seq)
                        pending += 1
                # events of other slices (and duplicates) are done as soon as seen
                self.offset = te.offset
                if pending >= s.commit_every or (
                        pending and time.monotonic() - last_commit >= s.commit_interval):
                    await self._commit()
                    pending, last_commit = 0, time.monotonic()
        await self._commit()
        return True

    async def _handle(self, te: TaggedEvent) -> bool:
        """Deliver one event with retries. True when handled, False when halted meanwhile;
        raises ``_Parked`` after the last failed attempt."""
        s = self.settings
        for attempt in range(1, s.retry_attempts + 1):
            try:
                env = _decode(self.serialization, te)
                result = self.handler.handle(env)
                if inspect.isawaitable(result):
                    await result
                self.handled += 1
                self.last_event_timestamp = env.timestamp
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                e = te.event
                self.error = (f"{type(exc).__name__}: {exc} [at {e.persistence_id!r} "
                              f"#{e.sequence_nr}, attempt {attempt}/{s.retry_attempts}]")
                self._failed_at = (e.persistence_id, e.sequence_nr)
                log.warning("projection %s %s: %s", self.spec.name, self.key, self.error,
                            extra=self._log_context())
                if attempt == s.retry_attempts:
                    raise _Parked() from exc
                self.retries += 1
                delay = min(s.retry_backoff * 2 ** (attempt - 1), s.retry_backoff_max)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), delay)
                if self._halt.is_set():
                    return False
        raise AssertionError("unreachable")

    async def _commit(self) -> None:
        if self.offset != self.committed:
            await self.store.save_offset(self.spec.name, self.key, self.offset)
            self.committed = self.offset

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        """State, offsets, counters, the last error, and the lag: ``lag_events`` (visible
        events of this slice after the handled offset, up to ``lag_scan_limit``) and
        ``lag_seconds`` (age of the oldest of them by tag-write time; 0 when caught up); both
        None while the journal cannot be read."""
        lag: int | None = 0
        oldest = None
        try:
            lag, oldest = await self._lag()
        except JournalError:  # status must answer during an outage; the error shows it
            lag = None
        lag_seconds = (None if lag is None else 0.0 if oldest is None
                       else max(0.0, (_now_us() - oldest) / 1e6))
        self.metrics.projection_lag(self.spec.name, self.key, lag, lag_seconds)
        return {
            "projection": self.spec.name,
            "worker": self.key,
            "tag": self.spec.tag,
            "state": self.state,
            "offset": offset_to_str(self.offset),
            "committed_offset": offset_to_str(self.committed),
            "handled": self.handled,
            "duplicates_skipped": self.duplicates_skipped,
            "retries": self.retries,
            "error": self.error,
            "lag_events": lag,
            "lag_seconds": lag_seconds,
            "last_event_timestamp": (self.last_event_timestamp.isoformat()
                                     if self.last_event_timestamp else None),
        }

    async def _lag(self) -> tuple[int, int | None]:
        lag, oldest = 0, None
        seen = _Dedupe()
        async with contextlib.aclosing(
            self.journal.events_by_tag(self.spec.tag, self.offset,
                                       limit=self.settings.lag_scan_limit)
        ) as rows:
            async for te in rows:
                pid, seq = te.event.persistence_id, te.event.sequence_nr
                if not self._mine(pid) or self._dedupe.is_duplicate(pid, seq) \
                        or seen.is_duplicate(pid, seq):
                    continue
                seen.mark(pid, seq)
                lag += 1
                if oldest is None:
                    oldest = te.offset.timestamp_us
        return lag, oldest

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._halt.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

