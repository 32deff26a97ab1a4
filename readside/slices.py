"""Slices without re-reading: one reader per projection feeds the other slice workers.

A projection of ``n > 1`` slices (``raysource.readside.projections.slice_of``) runs one worker
per slice. Without this module every worker reads the whole tag and keeps its slice (n reads
of the tag). With it, slice 0 is the *reader* (:class:`SliceReader`): it reads the tag once,
applies its own slice, and sends every other slice its events (``feed``: through Ray in
``raysource.readside.projection_actor``); slices 1..n-1 are *followers* that do not query the
tag themselves (:func:`accept_feed`).

Offsets stay per slice, each moved only past what that slice applied:

* a feed names the range it covers: ``from_offset`` (the follower's offset as the reader knows
  it) to ``up_to`` (the end of the read batch). A follower accepts it only if it starts at or
  before its own offset (else a gap: it answers its real offset, e.g. after a restart that
  reloaded an older committed offset), applies the events after its offset, moves its offset
  to ``up_to`` and answers it;
* the reader reads from the smallest offset of itself and the running followers (their stored
  rows at the start of a pass, then their answers), so a follower that missed a feed (down,
  restarting, refused) gets its events again in a later pass: the tag is read more than once
  only for what a failure made someone miss. After a failed feed the reader sends that
  follower nothing more in the pass (it must never skip a range);
* a follower that is not running (paused, stopped, or not booted) refuses feeds and does not
  hold the reader back; when it runs again the reader starts from its offset.

The live path (``raysource.readside.live``) is unchanged: writers offer each slice its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from raysource.journal.api import TaggedEvent, TagOffset
from raysource.readside.errors import ProjectionError
from raysource.readside.projections import slice_of, worker_key

if TYPE_CHECKING:
    from raysource.readside.worker import ProjectionWorker

__all__ = ["Feed", "SliceReader", "accept_feed"]

log = logging.getLogger(__name__)

# feed(slice, events, from_offset, up_to) -> the follower's offset after it
Feed = Callable[
    [int, list[TaggedEvent], "TagOffset | None", TagOffset], Awaitable["TagOffset | None"]
]


def _before(a: TagOffset | None, b: TagOffset | None) -> bool:
    """``a < b`` with None as the start."""
    return b is not None and (a is None or a < b)


class SliceReader:
    """Slice 0's durable pass for all slices (see the module docstring)."""

    def __init__(self, worker: ProjectionWorker, feed: Feed) -> None:
        self.worker = worker
        self.feed = feed
        self.known: dict[int, TagOffset | None] = {}  # follower -> its offset, as last heard
        self.rows_read = 0  # tag rows this reader has read (status: tag_rows_read)

    async def run_pass(self) -> None:
        w = self.worker
        n = w.spec.n_slices
        rows = {r.worker: r for r in await w.store.list(w.spec.name)}
        active = []
        for k in range(1, n):
            row = rows.get(worker_key(k, n))
            if row is None or row.desired != "running":
                self.known.pop(k, None)  # heard again from its stored row when it runs
                continue
            active.append(k)
            if k not in self.known or _before(self.known[k], row.offset):
                self.known[k] = row.offset
        start = w.offset
        for k in active:
            if _before(self.known[k], start):
                start = self.known[k]
        failed: set[int] = set()
        pending: dict[int, list[TaggedEvent]] = {k: [] for k in active}
        batch: list[TaggedEvent] = []

        async def flush(up_to: TagOffset, final: bool) -> None:
            await w._apply_durable(batch)
            sends = []
            for k in active:
                if k in failed or not _before(self.known.get(k), up_to):
                    continue
                if pending[k] or final:
                    sends.append(k)
            results = await asyncio.gather(
                *(self._send(k, pending[k], self.known.get(k), up_to) for k in sends)
            )
            for k, ok in zip(sends, results):
                pending[k] = []
                if not ok:
                    failed.add(k)

        async with contextlib.aclosing(w.journal.events_by_tag(w.spec.tag, start)) as rows_:
            async for te in rows_:
                if w._halt.is_set():
                    return
                self.rows_read += 1
                batch.append(te)
                k = slice_of(te.event.persistence_id, n)
                if k != 0 and k in pending and _before(self.known.get(k), te.offset):
                    pending[k].append(te)
                if len(batch) >= w.settings.batch_size:
                    await flush(te.offset, False)
                    batch = []
        if batch and not w._halt.is_set():
            await flush(batch[-1].offset, True)

    async def _send(
        self, k: int, events: list[TaggedEvent], from_offset: TagOffset | None, up_to: TagOffset
    ) -> bool:
        try:
            got = await self.feed(k, events, from_offset, up_to)
        except Exception as exc:  # down, restarting, not running: it gets them in a later pass
            log.info("projection %s: feed to slice %d failed: %r", self.worker.spec.name, k, exc)
            return False
        self.known[k] = got
        return got == up_to


async def accept_feed(
    worker: ProjectionWorker,
    events: list[TaggedEvent],
    from_offset: TagOffset | None,
    up_to: TagOffset,
) -> TagOffset | None:
    """A follower's side of a feed (see the module docstring): its offset afterwards."""
    if worker.state != "running":
        raise ProjectionError(f"projection {worker.spec.name} {worker.key} is {worker.state}")
    if _before(worker.offset, from_offset):
        return worker.offset  # a gap between its offset and the feed: the reader resyncs
    if events:
        await worker._apply_durable(events)
    if _before(worker.offset, up_to):
        worker.offset = up_to
    await worker._commit_if_due()
    return worker.offset
