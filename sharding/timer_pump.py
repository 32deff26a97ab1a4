"""The timer pump: finds due timers of the shards a node owns and fires them, paced.

Ray-free (like :mod:`raysource.sharding.coordinator_state` beside its host): the Ray actor
around it is :mod:`raysource.sharding.timer_service`; the test kit can drive it in-process.

One pass (:meth:`TimerPump.run_once`), for every ``(type, shard)`` the node owns:

1. read the shard's cursor (the oldest bucket that may hold rows; none: no timer was ever
   indexed for it) and every bucket from there up to "now", rows due by now;
2. move the cursor past a bucket that is empty and *settled* (its end is ``settle_ms`` in
   the past: no writer can still add a row to it, see :mod:`raysource.timers.api`);
3. fire the due rows: grouped per aggregate (up to ``batch_per_aggregate`` fires in one
   call: one journal write for many fires), at most ``max_in_flight`` aggregates at once and
   at most ``max_fires_per_s`` fires per second (a token bucket), earliest due first. After
   downtime the backlog is therefore delivered at a steady pace, not as a flood.

A fire's outcome decides its row: an answer (the command's reply, a rejection, a failure of
the command itself, or a stale fire) deletes it and records the **lateness** (answer time
minus due time); a failure that says nothing about the fire (the store, the activation or the
call failed) keeps the row, and the fire is tried again after ``retry_after_s``; a row that
keeps failing once its bucket is settled moves to the current bucket, so it never pins the
shard's cursor (and with it every later timer of the shard, beyond ``buckets_per_pass``).
Re-fires are harmless: the aggregate runs a timer's command only while that exact timer is
pending (:mod:`raysource.runtime.timers`), and fires carry the idempotency key ``timer:<id>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from raysource.journal.errors import ConfigError, SerializationError
from raysource.runtime.errors import CommandRejected, HandlerError, UnknownCommandError
from raysource.runtime.metrics import Metrics
from raysource.runtime.timers import TimerFire
from raysource.timers.api import DEFAULT_SETTLE_MS, TimerRow, TimerStore

__all__ = ["SendFires", "TimerPump", "TimerSettings"]

log = logging.getLogger(__name__)

# (type name, persistence id, fires) -> one outcome per fire: a reply or an error object
SendFires = Callable[[str, str, list[TimerFire]], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class TimerSettings:
    """How a timer service works (see the module docstring)."""

    poll_interval_s: float = 1.0
    max_fires_per_s: float = 1000.0
    max_in_flight: int = 16
    batch_per_aggregate: int = 100
    rows_per_read: int = 2000
    buckets_per_pass: int = 200
    retry_after_s: float = 2.0
    settle_ms: int = DEFAULT_SETTLE_MS

    def __post_init__(self) -> None:
        if min(self.poll_interval_s, self.max_fires_per_s, self.retry_after_s) <= 0:
            raise ConfigError("poll_interval_s, max_fires_per_s and retry_after_s must be > 0")
        if self.settle_ms < DEFAULT_SETTLE_MS:  # writers rely on it (raysource.timers.api)
            raise ConfigError(
                f"settle_ms must be >= {DEFAULT_SETTLE_MS} (writers re-write a "
                f"row only once its bucket ended {DEFAULT_SETTLE_MS // 2} ms "
                f"ago), got {self.settle_ms}"
            )
        if (
            min(
                self.max_in_flight,
                self.batch_per_aggregate,
                self.rows_per_read,
                self.buckets_per_pass,
            )
            < 1
        ):
            raise ConfigError(
                "max_in_flight, batch_per_aggregate, rows_per_read and "
                "buckets_per_pass must be >= 1"
            )


def _utcnow_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _answered(outcome: Any) -> bool:
    """True if ``outcome`` settles the fire (its row can go)."""
    if not isinstance(outcome, BaseException):
        return True
    # the timer's command itself answered (one that fails is not retried), or can never run
    return isinstance(
        outcome,
        (CommandRejected, HandlerError, UnknownCommandError, ConfigError, SerializationError),
    )


class _TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate, self.capacity, self._clock = rate, max(rate, 1.0), clock
        self.tokens, self._at = self.capacity, clock()

    async def take(self, n: float) -> None:
        n = min(n, self.capacity)
        while True:
            now = self._clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
            self._at = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate)


class TimerPump:
    """Fires the due timers of the shards ``owned()`` returns (``(type name, shard)`` pairs)
    through ``send``. ``wall_ms`` is the wall clock in epoch milliseconds."""

    def __init__(
        self,
        store: TimerStore,
        send: SendFires,
        owned: Callable[[], Awaitable[Iterable[tuple[str, int]]]],
        settings: TimerSettings | None = None,
        *,
        wall_ms: Callable[[], int] = _utcnow_ms,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.send = send
        self.owned = owned
        self.settings = settings or TimerSettings()
        self._wall_ms = wall_ms
        self._clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self._tokens = _TokenBucket(self.settings.max_fires_per_s, clock)
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._in_flight: set[tuple[Any, ...]] = set()  # row keys being fired
        # row key -> monotonic time of the next try
        self._retry_at: dict[tuple[Any, ...], float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.lateness_ms: deque[int] = deque(maxlen=100_000)  # newest answered fires
        self.fired = 0  # fires answered (row deleted)
        self.retried = 0  # fires that failed and stay due
        self.passes = 0
        self.owned_shards = 0
        self.backlog = 0  # due rows seen by the last pass, not yet answered

    # ------------------------------------------------------------------ passes

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set (a failed pass is logged and retried)."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("timer pass failed: %r", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass
        await self.drain()

    async def run_once(self) -> int:
        """One pass; returns how many fires it started."""
        self.passes += 1
        owned = list(await self.owned())
        self.owned_shards = len(owned)
        started = 0
        backlog = 0
        for type_name, shard in owned:
            rows = await self._due_rows(type_name, shard)
            backlog += len(rows)
            started += await self._fire(type_name, rows)
        self.backlog = backlog
        return started

    async def drain(self) -> None:
        """Wait for the fires in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _due_rows(self, type_name: str, shard: int) -> list[TimerRow]:
        cursor = await self.store.cursor(type_name, shard)
        if cursor is None:
            return []
        s, bucket_ms = self.settings, self.store.bucket_ms
        now_ms = self._wall_ms()
        last = now_ms // bucket_ms
        out: list[TimerRow] = []
        bucket = cursor
        while bucket <= last and bucket - cursor < s.buckets_per_pass:
            rows = await self.store.due(type_name, shard, bucket, now_ms, limit=s.rows_per_read)
            settled = (bucket + 1) * bucket_ms + s.settle_ms <= now_ms
            if bucket == cursor and settled and not rows:
                cursor = bucket + 1  # empty and no writer can add to it any more
                await self.store.advance(type_name, shard, cursor)
            out += rows
            bucket += 1
        return out

    async def _fire(self, type_name: str, rows: list[TimerRow]) -> int:
        now = self._clock()
        if len(self._retry_at) > 10_000:  # forget waits that ended (rows fired elsewhere)
            self._retry_at = {k: t for k, t in self._retry_at.items() if t > now}
        by_aggregate: dict[str, list[TimerRow]] = {}
        for r in sorted(rows, key=lambda r: r.due_ms):
            if r.key in self._in_flight or self._retry_at.get(r.key, 0.0) > now:
                continue
            by_aggregate.setdefault(r.persistence_id, []).append(r)
        started = 0
        for pid, group in by_aggregate.items():
            for i in range(0, len(group), self.settings.batch_per_aggregate):
                chunk = group[i : i + self.settings.batch_per_aggregate]
                await self._tokens.take(len(chunk))
                await self._slots.acquire()
                self._in_flight.update(r.key for r in chunk)
                task = asyncio.create_task(self._fire_chunk(type_name, pid, chunk))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started += len(chunk)
        return started

    async def _fire_chunk(self, type_name: str, pid: str, rows: list[TimerRow]) -> None:
        try:
            try:
                outcomes = list(
                    await self.send(
                        type_name,
                        pid,
                        [TimerFire(r.name, r.timer_id, r.traceparent, r.tracestate) for r in rows],
                    )
                )
            except Exception as exc:  # the call itself failed: every fire stays due
                outcomes = [exc] * len(rows)
            done = [r for r, o in zip(rows, outcomes) if _answered(o)]
            failed = [(r, o) for r, o in zip(rows, outcomes) if not _answered(o)]
            if done:
                await self.store.delete(done)
                now_ms = self._wall_ms()
                for r in done:
                    late = max(0, now_ms - r.due_ms)
                    self.lateness_ms.append(late)
                    self.metrics.observe(
                        "raysource_timer_lateness_seconds", late / 1000, type=type_name
                    )
                    self.metrics.inc("raysource_timers_fired_total", type=type_name)
                    self._retry_at.pop(r.key, None)
                self.fired += len(done)
            if failed:
                self.retried += len(failed)
                log.info(
                    "%s: %d timer fires not answered (%r); retrying in %.1f s",
                    pid,
                    len(failed),
                    failed[0][1],
                    self.settings.retry_after_s,
                )
                later = self._clock() + self.settings.retry_after_s
                for r in await self._move_forward([r for r, _ in failed]):
                    self._retry_at[r.key] = later
        except Exception as exc:  # the row delete failed: the rows fire again (stale)
            log.warning("%s: timer bookkeeping failed: %r", pid, exc)
        finally:
            self._in_flight.difference_update(r.key for r in rows)
            self._slots.release()

    async def _move_forward(self, rows: list[TimerRow]) -> list[TimerRow]:
        """Failed rows of a settled bucket pin their shard's cursor, and a pass reads at most
        ``buckets_per_pass`` buckets from it: a timer whose fire fails for hours would stop
        every later timer of its shard. Such rows are re-indexed into the current bucket (the
        new row first, then the old one deleted; the fire stays due); returns the rows as
        they are now."""
        now_ms, bucket_ms = self._wall_ms(), self.store.bucket_ms
        settle = self.settings.settle_ms
        stuck = [r for r in rows if (r.bucket + 1) * bucket_ms + settle <= now_ms]
        if not stuck:
            return rows
        moved = {r.key: dataclasses.replace(r, bucket=now_ms // bucket_ms) for r in stuck}
        try:
            await self.store.upsert(list(moved.values()))
            await self.store.delete(stuck)
        except Exception as exc:  # stays where it is; tried again with the next failure
            log.warning("moving %d failing timer rows forward failed: %r", len(stuck), exc)
            return rows
        return [moved.get(r.key, r) for r in rows]

    # ------------------------------------------------------------------ diagnostics

    def info(self) -> dict[str, Any]:
        """Fires answered and retried, the backlog, owned shards, and the lateness (ms) of
        the newest answered fires: p50, p99, max."""
        lat = sorted(self.lateness_ms)

        def pct(q: float) -> int | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        return {
            "fired": self.fired,
            "retried": self.retried,
            "backlog": self.backlog,
            "in_flight": len(self._in_flight),
            "owned_shards": self.owned_shards,
            "passes": self.passes,
            "lateness_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else None},
        }
