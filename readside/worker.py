"""The projection worker: one slice of a projection, on any journal and offset store.

Size: ~640 lines: the durable path, the live path's hand-off and parking share one worker's
offset and per-aggregate state; the live buffer, parking and slices are modules of their own.

No Ray here (the actor is :mod:`raysource.readside.projection_actor`).

Lifecycle like Lagom's ReadSideProcessor, on a user
:class:`~raysource.readside.projections.ProjectionHandler`: ``global_prepare()`` once per start
of the projection (create tables), ``prepare()`` once per worker activation and after a reset,
then the worker's events, in offset order per aggregate.

Two paths feed the handler, under one lock:

* **durable**: the tag query from the stored offset, every ``poll_interval``; events of the
  worker's slice, in batches of up to ``batch_size`` (``handle_batch``) or one at a time
  (``handle``). It is the source of truth: the offset (the :mod:`~raysource.readside.offsets`
  store) is stored past the events it delivered, every ``commit_every`` events or
  ``commit_interval`` seconds and when the query is drained; after a crash the worker resumes
  strictly after the stored offset (at-least-once: make the handler idempotent, e.g. with
  :class:`~raysource.readside.views.EffectivelyOnceView`).
* **live** (:mod:`raysource.readside.live`): events offered by the writers right after their
  append is acknowledged, applied at once if they continue their aggregate's sequence. It never
  moves the offset.

Both de-duplicate by ``(persistence_id, sequence_nr)``. A handler error is retried
``retry_attempts`` times with exponential backoff; then the event's *aggregate* is parked
(:mod:`raysource.readside.parking`): its later events are passed over, every other aggregate
keeps flowing, status lists it, and :meth:`ProjectionWorker.retry` / ``skip`` re-apply its
stream from the journal. A failing journal or offset store is not the handler's fault, nor
is a view store that cannot be reached (a handler raising ``JournalUnavailableError``, as
``EffectivelyOnceView`` does): the worker parks nothing, keeps running, shows the error in
``status`` and retries the pass from its offset with backoff. An unexpected
worker bug parks the whole worker (state ``parked``) visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from raysource.journal.api import Journal, StoredEvent, TagOffset
from raysource.journal.cassandra.keystore import key_ring
from raysource.journal.errors import ConfigError, JournalError, JournalUnavailableError
from raysource.readside.effects import SideEffects
from raysource.readside.live import LiveInbox
from raysource.readside.offsets import CassandraOffsetStore, OffsetStore, now_us
from raysource.readside.parking import ParkedStreams, retry_stream
from raysource.readside.projections import (
    _STORE_ERROR,
    EventEnvelope,
    ProjectionHandler,
    ProjectionSpec,
    WorkerState,
    _Dedupe,
    batches_events,
    offset_to_str,
    slice_of,
    worker_key,
)
from raysource.readside.slices import Feed, SliceReader, accept_feed
from raysource.runtime import tracing
from raysource.runtime.metrics import Metrics

__all__ = ["ProjectionWorker"]

log = logging.getLogger(__name__)
_NO_SPAN = contextlib.nullcontext()  # the handling "span" when tracing is off

_Item = tuple[StoredEvent, "TagOffset | None"]


class _Halted(Exception):
    """The worker was halted while retrying an event (it stays unhandled)."""


class ProjectionWorker:
    """Runs one slice of a projection in the current event loop (see the module docstring).

    ``session``/``config``: the Cassandra session and config the handler factory gets (None on
    the in-memory journal); ``offsets`` defaults to the Cassandra offset store of
    ``config.keyspace``; ``handler`` defaults to ``spec.handler_factory(session, config)``.
    Build it, ``await boot()`` (loads the offset and parked streams; resumes if the stored
    desired state is "running"), control it with ``start/pause/resume/stop/reset``, feed live
    events with :meth:`offer`, read :meth:`status`. A worker assumes it is the only one running
    its (projection, slice): the Ray actor name guarantees that.
    """

    def __init__(
        self,
        spec: ProjectionSpec,
        slice_index: int,
        session: Any,
        config: Any,
        journal: Journal,
        metrics: Metrics | None = None,
        *,
        offsets: OffsetStore | None = None,
        handler: ProjectionHandler | None = None,
    ) -> None:
        if not 0 <= slice_index < spec.n_slices:
            raise ConfigError(f"slice {slice_index} outside 0..{spec.n_slices - 1}")
        if offsets is None and (session is None or config is None):
            raise ConfigError("a worker without a Cassandra session needs an offset store")
        self.spec = spec
        self.slice_index = slice_index
        self.key = worker_key(slice_index, spec.n_slices)
        self.session, self.config, self.journal = session, config, journal
        self.serialization = spec.serialization(
            key_ring(config, session) if session is not None and config is not None else None
        )
        self.store = offsets or CassandraOffsetStore(session, config.keyspace)
        self.handler = handler or spec.handler_factory(session, config)
        self.settings = s = spec.settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.state: WorkerState = "idle"
        self.offset: TagOffset | None = None  # everything up to here is handled
        self.committed: TagOffset | None = None
        self.error = ""
        self.handled = self.duplicates_skipped = self.retries = 0
        self.last_event_timestamp: datetime | None = None
        self.parked = ParkedStreams(self.store, spec.name, self.key)
        self.live = LiveInbox(s.live_buffer)
        self._batching = batches_events(self.handler)
        self._dedupe = _Dedupe(s.dedupe_capacity)
        self._apply = asyncio.Lock()  # the durable and the live path never apply at once
        self._task: asyncio.Task[None] | None = None
        self._live_task: asyncio.Task[None] | None = None
        self._live_wake = asyncio.Event()
        self._halt = asyncio.Event()
        self._control = asyncio.Lock()
        self._prepared = False
        self._pending, self._last_commit = 0, time.monotonic()
        self.reader: SliceReader | None = None
        self.follower = False
        self.rows_read = 0  # tag rows read by this worker's durable passes
        # declared side effects: run by the live version only, once (readside.effects)
        self.effects = SideEffects(
            self.handler, spec.name, session, config.keyspace if config is not None else ""
        )

    def _mine(self, pid: str) -> bool:
        return self.spec.n_slices == 1 or slice_of(pid, self.spec.n_slices) == self.slice_index

    def _log(self, level: int, msg: str, pid: str | None = None, seq: int | None = None) -> None:
        log.log(
            level,
            "projection %s %s: %s",
            self.spec.name,
            self.key,
            msg,
            extra={
                "projection": self.spec.name,
                "worker": self.key,
                "persistence_id": pid,
                "sequence_nr": seq,
            },
        )

    # ------------------------------------------------------------------ lifecycle

    async def global_prepare(self) -> None:
        await self.store.create()
        await self.handler.global_prepare()

    async def boot(self) -> None:
        await self.store.create()
        row = await self.store.load(self.spec.name, self.key)
        self.offset = self.committed = row.offset if row else None
        await self.parked.load(self._mine)
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
        again (``handler.on_reset``, then ``prepare`` before the next event); parked streams
        of this worker are released (their events come again). Keeps the running state."""
        async with self._control:
            was_running = self._task is not None and not self._task.done()
            if self.state != "idle":
                await self._stop_loop(
                    "paused" if self.state in ("running", "parked") else self.state
                )
            if self.state == "parked":
                self.state = "paused"
            await self.store.save_offset(self.spec.name, self.key, offset)
            self.offset = self.committed = offset
            self._dedupe.clear()
            for rec in self.parked.records():
                await self.parked.unpark(rec.persistence_id)
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
        self.effects.recheck()  # the alias may have moved while it was paused
        self.state = "running"
        await self.store.set_state(self.spec.name, self.key, "running", "")
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if self.settings.live:
            self._live_task = loop.create_task(self._live_loop())

    async def _stop_loop(self, state: WorkerState) -> None:
        self._halt.set()
        self._live_wake.set()
        for attr in ("_task", "_live_task"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is None or task.done():
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), 30.0)
            except TimeoutError:  # a handler that hangs: give up on it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.live.drop_all()
        if self.state != "parked" or state == "stopped":
            self.state = state
        await self._commit()
        await self.store.set_state(self.spec.name, self.key, self.state, self.error)

    # ------------------------------------------------------------------ the durable path

    async def _run(self) -> None:
        s = self.settings
        failures = 0
        try:
            while not self._halt.is_set():
                try:
                    await self._pass()
                    failures = 0
                    if self.error.startswith(_STORE_ERROR):
                        self.error = ""
                    delay = s.poll_interval
                except _Halted:
                    return  # the event stays unhandled: redelivered after resume
                except JournalError as exc:  # journal or offset store: not the handler's fault
                    failures += 1
                    self.error = f"{_STORE_ERROR}{type(exc).__name__}: {exc}"
                    self._log(logging.WARNING, self.error)
                    delay = min(s.retry_backoff * 2 ** min(failures, 20), s.retry_backoff_max)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), delay)
        except Exception as exc:  # a bug, not an outage: park the worker, visibly
            log.exception("projection %s %s failed, parked", self.spec.name, self.key)
            self.error = f"worker failed: {type(exc).__name__}: {exc}"
            self.state = "parked"
            self._halt.set()
            self._live_wake.set()
            with contextlib.suppress(Exception):
                await self.store.set_state(self.spec.name, self.key, "parked", self.error)

    def lead(self, feed: Feed) -> None:
        """Make this worker (slice 0 of n > 1) the reader that feeds the other slices."""
        self.reader = SliceReader(self, feed)

    def follow(self) -> None:
        """Make this worker (slice k > 0) a follower: fed by the reader, no tag query."""
        self.follower = True

    async def feed(
        self, events: list, from_offset: TagOffset | None, up_to: TagOffset
    ) -> TagOffset | None:
        """A follower's feed from the reader (see :mod:`raysource.readside.slices`)."""
        return await accept_feed(self, events, from_offset, up_to)

    async def _pass(self) -> None:
        """One current query from the handled offset, in batches; then commit. A reader
        reads for every slice; a follower only commits (it is fed)."""
        if self.follower:
            await self._commit_if_due()
            return
        if self.reader is not None:
            await self.reader.run_pass()
            await self._commit()
            return
        # the next batch is read while this one is applied (one batch ahead, bounded)
        batches: asyncio.Queue = asyncio.Queue(maxsize=1)
        reading = asyncio.get_running_loop().create_task(self._read_batches(batches))
        try:
            while (got := await batches.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                if self._halt.is_set():
                    break
                await self._apply_durable(*got)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        await self._commit()

    async def _read_batches(self, out: asyncio.Queue) -> None:
        """The tag query from the handled offset, as batches into ``out``; then None (or
        the error that ended it). Each batch comes with its events of this slice decoded
        (None where decoding failed: delivery decodes it again and handles the error), so
        decoding runs while the batch before is being applied (a view's writes in flight)."""
        batch: list = []
        decoded: list[EventEnvelope | None] = []
        try:
            async with contextlib.aclosing(
                self.journal.events_by_tag(self.spec.tag, self.offset)
            ) as rows:
                async for te in rows:
                    if self._halt.is_set():
                        break
                    self.rows_read += 1
                    batch.append(te)
                    decoded.append(self._decode_ahead(te))
                    if len(batch) >= self.settings.batch_size:
                        await out.put((batch, decoded))
                        batch, decoded = [], []
            if batch:
                await out.put((batch, decoded))
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the consumer raises it (a journal outage: retried)
            await out.put(exc)

    def _decode_ahead(self, te: Any) -> EventEnvelope | None:
        if not self._mine(te.event.persistence_id):
            return None
        try:
            return self._envelope(te.event, te.offset)
        except Exception:  # delivery decodes it again: retried, then parked
            return None

    async def _apply_durable(
        self, batch: list, decoded: list[EventEnvelope | None] | None = None
    ) -> None:
        """Deliver ``batch`` (tag rows; ``decoded``: their envelopes, where decoded ahead)."""
        async with self._apply:
            todo: list[_Item] = []
            ahead: list[EventEnvelope | None] = []
            seen: dict[str, int] = {}
            for i, te in enumerate(batch):
                pid, seq = te.event.persistence_id, te.event.sequence_nr
                if not self._mine(pid) or self.offset is not None and te.offset <= self.offset:
                    continue  # another slice's, or handled (a reader re-reads for a follower)
                if pid in self.parked:
                    self.parked.passed_over += 1
                    continue
                last = max(seen.get(pid, 0), self._dedupe.last(pid) or 0)
                if seq <= last:
                    self.duplicates_skipped += 1
                    continue
                seen[pid] = seq
                todo.append((te.event, te.offset))
                ahead.append(decoded[i] if decoded is not None else None)
            if todo:
                await self._deliver(todo, ahead)
            # events of other slices, duplicates and parked ones are done as soon as seen
            if self.offset is None or self.offset < batch[-1].offset:
                self.offset = batch[-1].offset
            self._pending += len(todo)
        await self._commit_if_due()

    async def _commit_if_due(self) -> None:
        s = self.settings
        if self._pending >= s.commit_every or (
            self.offset != self.committed
            and time.monotonic() - self._last_commit >= s.commit_interval
        ):
            await self._commit()

    async def _commit(self) -> None:
        if self.offset != self.committed:
            await self.store.save_offset(self.spec.name, self.key, self.offset)
            self.committed = self.offset
        self._pending, self._last_commit = 0, time.monotonic()

    # ------------------------------------------------------------------ the live path

    def offer(self, events: Sequence[StoredEvent]) -> None:
        """Live events of this worker's tag (any slice), just acknowledged by their writer."""
        if self.state != "running" or self._live_task is None:
            self.live.stats.offered += len(events)
            self.live.stats.dropped += len(events)
            return
        self.live.put(events)
        self._live_wake.set()

    async def _live_loop(self) -> None:
        while not self._halt.is_set():
            await self._live_wake.wait()
            self._live_wake.clear()
            if self._halt.is_set():
                return
            try:
                async with self._apply:
                    started, oldest = time.monotonic(), self.live.oldest
                    picks = self.live.select(
                        self.live.take(),
                        lambda p: self._mine(p) and p not in self.parked,
                        self._dedupe.last,
                    )
                    todo: list[_Item] = []
                    for e, fill_from in picks:
                        if fill_from is not None:
                            missing = await ParkedStreams.events_from(
                                self.journal,
                                e.persistence_id,
                                fill_from,
                                self.spec.tag,
                                e.sequence_nr - 1,
                            )
                            todo += [(m, None) for m in missing]
                            self.live.stats.backfilled += len(missing)
                        todo.append((e, None))
                    if todo:
                        await self._deliver(todo)
                        self.live.stats.applied += len(todo)
                        self.live.stats.timed(started, oldest)
            except _Halted:
                return
            except Exception as exc:  # a store error: the durable path delivers them later
                self._log(logging.WARNING, f"live path: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ delivery

    def _envelope(self, e: StoredEvent, offset: TagOffset | None) -> EventEnvelope:
        obj = self.serialization.decode(
            e.serializer_id,
            e.manifest,
            bytes(e.payload),
            persistence_id=e.persistence_id,
            sequence_nr=e.sequence_nr,
        )
        return EventEnvelope(
            obj, e.persistence_id, e.sequence_nr, e.timestamp, offset, self.spec.tag
        )

    def _span(self, events: list[StoredEvent]) -> contextlib.AbstractContextManager[Any]:
        """The handling's span, linked to the events' appends (raysource.runtime.tracing)."""
        return tracing.handling(self.spec.name, events)

    def _done(self, envs: list[EventEnvelope]) -> None:
        for env in envs:
            self._dedupe.mark(env.persistence_id, env.sequence_nr)
        self.handled += len(envs)
        self.last_event_timestamp = envs[-1].timestamp

    async def _deliver(
        self, items: list[_Item], decoded: list[EventEnvelope | None] | None = None
    ) -> None:
        """Apply ``items`` (the caller holds the apply lock; each aggregate's events in
        order; ``decoded``: their envelopes where decoded already). Raises ``_Halted`` if
        halted during a retry."""
        if self._batching and len(items) > 1:
            try:
                envs = [
                    env if env is not None else self._envelope(e, off)
                    for (e, off), env in zip(items, decoded or [None] * len(items), strict=True)
                ]
                with _NO_SPAN if not tracing.ENABLED else self._span([e for e, _ in items]):
                    await self.handler.handle_batch(envs)
                self._done(envs)
                await self.effects.after_applied(envs)
                return
            except (asyncio.CancelledError, JournalUnavailableError):
                raise  # a store outage is nobody's poison: the pass is retried with backoff
            except Exception as exc:  # find the poison event: one by one, with retries
                self._log(
                    logging.WARNING,
                    f"batch of {len(items)} failed ({exc!r}); delivering one by one",
                )
            decoded = None  # one by one: each decoded again, its errors handled there
        for i, (e, off) in enumerate(items):
            if e.persistence_id in self.parked:
                self.parked.passed_over += 1
                continue
            await self._deliver_one(e, off, decoded[i] if decoded is not None else None)

    async def _deliver_one(
        self, e: StoredEvent, offset: TagOffset | None, decoded: EventEnvelope | None = None
    ) -> bool:
        """Deliver one event with retries (``decoded``: its envelope for the first attempt);
        park its aggregate after the last attempt. True if applied, False if parked; raises
        ``_Halted``."""
        s = self.settings
        for attempt in range(1, s.retry_attempts + 1):
            try:
                env = decoded if decoded is not None and attempt == 1 else self._envelope(e, offset)
                with _NO_SPAN if not tracing.ENABLED else self._span([e]):
                    if self._batching:
                        await self.handler.handle_batch([env])
                    else:
                        result = self.handler.handle(env)
                        if inspect.isawaitable(result):
                            await result
                self._done([env])
                await self.effects.after_applied([env])
                return True
            except (asyncio.CancelledError, JournalUnavailableError):
                raise
            except Exception as exc:
                error = (
                    f"{type(exc).__name__}: {exc} [at {e.persistence_id!r} "
                    f"#{e.sequence_nr}, attempt {attempt}/{s.retry_attempts}]"
                )
                self._log(logging.WARNING, error, e.persistence_id, e.sequence_nr)
                if attempt == s.retry_attempts:
                    await self.parked.park(e.persistence_id, e.sequence_nr, error)
                    self._log(
                        logging.ERROR,
                        f"aggregate stream parked: {error}",
                        e.persistence_id,
                        e.sequence_nr,
                    )
                    return False
                self.retries += 1
                delay = min(s.retry_backoff * 2 ** (attempt - 1), s.retry_backoff_max)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), delay)
                if self._halt.is_set():
                    raise _Halted() from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ parked streams

    async def retry(self, persistence_id: str, *, skip: bool = False) -> dict[str, Any]:
        """Re-apply a parked aggregate stream from the journal: from its poison event, or
        (``skip``) from the event after it (:func:`raysource.readside.parking.retry_stream`).
        ``ProjectionError`` if the aggregate is not parked here."""
        return await retry_stream(self, persistence_id, skip=skip)

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        """State, offsets, counters, the last error, the parked streams, the live path's
        counters, and the lag: ``lag_events`` (visible events of this slice after the handled
        offset, up to ``lag_scan_limit``) and ``lag_seconds`` (age of the oldest of them by
        tag-write time; 0 when caught up); both None while the journal cannot be read."""
        lag: int | None = 0
        oldest = None
        try:
            lag, oldest = await self._lag()
        except JournalError:  # status must answer during an outage; the error shows it
            lag = None
        lag_seconds = (
            None if lag is None else 0.0 if oldest is None else max(0.0, (now_us() - oldest) / 1e6)
        )
        self.metrics.projection_lag(self.spec.name, self.key, lag, lag_seconds)
        parked = self.parked.records()
        self.metrics.set(
            "raysource_projection_parked", len(parked), projection=self.spec.name, slice=self.key
        )
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
            "last_event_timestamp": (
                self.last_event_timestamp.isoformat() if self.last_event_timestamp else None
            ),
            "parked": [p.as_dict() for p in parked],
            "parked_passed_over": self.parked.passed_over,
            "role": "reader" if self.reader else "follower" if self.follower else "own reads",
            "tag_rows_read": self.reader.rows_read if self.reader else self.rows_read,
            "live": self.live.stats.as_dict(),
        }

    async def _lag(self) -> tuple[int, int | None]:
        lag, oldest = 0, None
        seen = _Dedupe()
        async with contextlib.aclosing(
            self.journal.events_by_tag(
                self.spec.tag, self.offset, limit=self.settings.lag_scan_limit
            )
        ) as rows:
            async for te in rows:
                pid, seq = te.event.persistence_id, te.event.sequence_nr
                if (
                    not self._mine(pid)
                    or self._dedupe.is_duplicate(pid, seq)
                    or seen.is_duplicate(pid, seq)
                ):
                    continue
                seen.mark(pid, seq)
                lag += 1
                if oldest is None:
                    oldest = te.offset.timestamp_us
        return lag, oldest

    async def close(self) -> None:
        self._halt.set()
        self._live_wake.set()
        for task in (self._task, self._live_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
