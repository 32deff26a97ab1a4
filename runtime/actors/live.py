"""The writer's half of the read side's live path: offer acknowledged events to projections.

A host actor installs :meth:`LivePublisher.publish` as its host's ``on_durable`` listener
(:class:`~raysource.runtime.host.AggregateHost`): after each acknowledged append, the events
are sent to every projection worker subscribed to one of their tags, in the worker's slice
(``shard_of(persistence_id, n_slices)``, the same hash as ``raysource.readside.projections.
slice_of``), with ``worker.offer.remote(events)`` — one Ray call per worker per event-loop turn
(events appended meanwhile are coalesced).

Best effort by design; the durable tag query fills whatever this misses:

* subscribers are found by listing the named projection workers (``cluster.projection_name``)
  and asking each new one its ``subscription()`` once; the list is refreshed when the host
  opens (the first events wait for that first list, up to ``refresh_wait_s``) and when a
  publish finds it older than ``refresh_s`` (in the background; idle hosts never list). A
  worker the refresh finds new is sent the events published in the last ``2 * refresh_s``
  (at most ``recent_max`` kept), so it misses none that were appended after it started;
* at most ``max_in_flight`` offers per worker are outstanding (Ray queues actor calls without
  bound): beyond that events are dropped and counted (``dropped``), not queued;
* a worker that died is forgotten until the next refresh finds its successor (and sends it
  the recent events);
* cost: one ``list_named_actors`` (all namespaces) per ``refresh_s`` per publishing host, which
  grows with the number of named actors (every dedicated host is one): a registry that lists
  only projection workers would scale better.
Ordering: Ray delivers one caller's calls to one actor in order; the worker still checks each
event continues its aggregate's sequence (``raysource.readside.live``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from raysource.journal.api import StoredEvent
from raysource.runtime.actors.cluster import parse_name
from raysource.runtime.shard_id import shard_of

__all__ = ["LivePublisher"]

log = logging.getLogger(__name__)


@dataclass
class _Subscriber:
    handle: Any
    tag: str
    slice_index: int
    n_slices: int
    in_flight: int = 0


class LivePublisher:
    """Offers acknowledged events to subscribed projection workers (see module docstring).
    Use from one event loop (an async actor's); :meth:`publish` never blocks or raises."""

    def __init__(
        self,
        *,
        refresh_s: float = 3.0,
        max_in_flight: int = 32,
        refresh_wait_s: float = 0.5,
        recent_max: int = 5000,
    ) -> None:
        self.refresh_s = refresh_s
        self.refresh_wait_s = refresh_wait_s
        self.max_in_flight = max_in_flight
        self._subs: dict[tuple[str, str], _Subscriber] = {}  # (namespace, name) -> subscriber
        self._by_tag: dict[str, list[tuple[tuple[str, str], _Subscriber]]] = {}
        self._queue: list[StoredEvent] = []
        self._recent: deque[tuple[float, StoredEvent]] = deque(maxlen=recent_max)
        self._listed = False  # a first list of subscribers arrived
        self._refreshed = float("-inf")
        self._refreshing: asyncio.Task | None = None
        self._flush_scheduled = False
        self.published = 0  # events sent (counted once per worker)
        self.dropped = 0

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """The ``on_durable`` listener: queue ``events`` for their subscribers."""
        if time.monotonic() - self._refreshed >= self.refresh_s:
            self.refresh()
        self._queue.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().create_task(self._flush())

    def refresh(self) -> None:
        """Re-list the subscribers in the background (no-op while a refresh runs)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshed = time.monotonic()
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            entries = await loop.run_in_executor(
                None, lambda: ray.util.list_named_actors(all_namespaces=True)
            )
            found, known = set(), set(self._subs)
            for entry in entries:
                name, ns = (
                    (entry, "")
                    if isinstance(entry, str)
                    else (entry.get("name", ""), entry.get("namespace", ""))
                )
                parsed = parse_name(name)
                if parsed is None or parsed.kind != "projection":
                    continue
                found.add((ns, name))
                if (ns, name) not in self._subs:
                    await self._subscribe(ns, name)
            for key in set(self._subs) - found:
                del self._subs[key]
            new = {k: s for k, s in self._subs.items() if k not in known}
            self._index()
            self._listed = True
            if new:  # what they missed while unknown: the events of the last refresh_s
                horizon = time.monotonic() - 2 * self.refresh_s
                recent = [e for t, e in self._recent if t >= horizon]
                by_tag: dict[str, list] = {}
                for key, sub in new.items():
                    by_tag.setdefault(sub.tag, []).append((key, sub))
                self._send(self._route(recent, by_tag))
        except Exception as exc:  # best effort: try again at the next refresh
            log.info("live publisher: listing subscribers failed: %r", exc)

    async def _subscribe(self, ns: str, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            handle = await loop.run_in_executor(
                None, lambda: ray.get_actor(name, namespace=ns or None)
            )
            subscription: tuple[str, int, int, bool] = await asyncio.wait_for(
                handle.subscription.remote(), 5.0
            )
            tag, index, n, live = subscription
        except Exception as exc:  # booting, gone, or an old worker without the live path
            log.info("live publisher: %s not subscribed: %r", name, exc)
            return
        if live:
            self._subs[(ns, name)] = _Subscriber(handle, tag, index, n)

    def _index(self) -> None:
        by_tag: dict[str, list] = {}
        for key, sub in self._subs.items():
            by_tag.setdefault(sub.tag, []).append((key, sub))
        self._by_tag = by_tag

    async def _flush(self) -> None:
        refreshing = self._refreshing
        if not self._listed and refreshing is not None and not refreshing.done():
            # the first list of a new host: route with it, but never wait long for a slow
            # registry (the durable path covers what is missed)
            await asyncio.wait({refreshing}, timeout=self.refresh_wait_s)
        self._flush_scheduled = False
        events, self._queue = self._queue, []
        now = time.monotonic()
        self._recent.extend((now, e) for e in events)
        self._send(self._route(events, self._by_tag))

    def _route(
        self, events: Sequence[StoredEvent], by_tag: dict[str, list]
    ) -> dict[tuple[str, str], list[StoredEvent]]:
        pending: dict[tuple[str, str], list[StoredEvent]] = {}
        for e in events:
            for tag in e.tags:
                for key, sub in by_tag.get(tag, ()):
                    if (
                        sub.n_slices == 1
                        or shard_of(e.persistence_id, sub.n_slices) == sub.slice_index
                    ):
                        pending.setdefault(key, []).append(e)
        return pending

    def _send(self, pending: dict[tuple[str, str], list[StoredEvent]]) -> None:
        for key, batch in pending.items():
            sub = self._subs.get(key)
            if sub is None or sub.in_flight >= self.max_in_flight:
                self.dropped += len(batch)
                continue
            try:
                ref = sub.handle.offer.remote(batch)
            except Exception:
                self.dropped += len(batch)
                continue
            sub.in_flight += 1
            self.published += len(batch)
            asyncio.ensure_future(self._settle(key, sub, ref))

    async def _settle(self, key: tuple[str, str], sub: _Subscriber, ref: Any) -> None:
        try:
            await ref
        except Exception:  # the worker died: forget it until a refresh finds its successor
            if self._subs.get(key) is sub:
                del self._subs[key]
                self._index()
        finally:
            sub.in_flight -= 1
