"""Recovery: the phases an activation goes through before it runs commands.

Modelled on Pekko's event-sourced behaviour (``ReplayingSnapshot`` -> ``ReplayingEvents`` ->
``Running``); :class:`Recovery` is the first two phases (and the repairs between them and
Running), :class:`raysource.runtime.core.EntityCore` is Running. The core runs one
:class:`Recovery` when it starts (after the journal's claim of the activation) and again to
rebuild its state after a failed write; commands submitted meanwhile wait in its mailbox.

* **ReplayingSnapshot** (:meth:`Recovery.replaying_snapshot`): the newest decodable snapshot
  with the idempotency keys and pending timers saved in it; an undecodable one makes it ask
  for the next older one, then fall back to a full replay.
* ``highest_sequence_nr`` is read BEFORE the events, and the replay goes up to it: every
  number up to it is then either replayed (applied) or deleted, never skipped. (Read after
  the replay, a number another writer appended in between would be taken as ours without its
  event being applied: a write decided on a stale state.) A writer that appends after this
  read is met by the fencing guard at the core's first write. A snapshot beyond that number
  cannot be trusted: full replay.
* **ReplayingEvents** (:meth:`Recovery.replaying_events`): every later event through the
  aggregate's event handler; the keys and timers their metadata carries go into the tables.
* **Repairs** before anyone is answered: the newest atomic group (one flush: same writer,
  same timestamp) goes into its tag streams again, and its still pending schedules into the
  timer index: its writer may have died between the events and those writes (every older
  group was completed before the next append).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import SerializationError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.idempotency import KeyTable
from raysource.runtime.metrics import Metrics
from raysource.runtime.timers import TimerTable
from raysource.snapshots.api import SnapshotStore

__all__ = ["Recovered", "Recovery", "RecoveryStats"]

log = logging.getLogger("raysource.runtime.core")  # the activation's records, one logger


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    """What one recovery did. ``snapshot_sequence_nr`` is None when no snapshot was used;
    ``snapshots_skipped`` counts snapshots that could not be decoded."""

    snapshot_sequence_nr: int | None
    snapshots_skipped: int
    events_replayed: int
    sequence_nr: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Recovered:
    """Where Running starts: the state after every durable event and its sequence number."""

    state: Any
    sequence_nr: int
    stats: RecoveryStats


class Recovery:
    """One recovery of the activation of ``persistence_id`` (see the module docstring).

    ``keys`` and ``timers`` are the activation's tables, rebuilt here; ``repair_timer_index``
    writes index rows for the pending schedules of the newest group; ``group_limit`` bounds
    the newest group kept for the repairs (no group exceeds the journal's limit)."""

    def __init__(
        self,
        aggregate_type: AggregateType[Any, Any, Any],
        persistence_id: str,
        journal: Journal,
        snapshot_store: SnapshotStore,
        serialization: Serialization,
        *,
        keys: KeyTable,
        timers: TimerTable,
        repair_timer_index: Callable[[list[StoredEvent]], Awaitable[None]],
        metrics: Metrics,
        log_context: Callable[[int | None], dict[str, Any]],
        group_limit: int,
    ) -> None:
        self.aggregate_type = aggregate_type
        self.persistence_id = persistence_id
        self.journal = journal
        self.snapshot_store = snapshot_store
        self.serialization = serialization
        self.keys = keys
        self.timers = timers
        self._repair_timer_index = repair_timer_index
        self.metrics = metrics
        self._log_context = log_context
        self.newest_group: deque[StoredEvent] = deque(maxlen=group_limit)

    async def run(self) -> Recovered:
        started = time.perf_counter()
        state, seq, snap_seq, skipped = await self.replaying_snapshot()
        highest = await self.journal.highest_sequence_nr(self.persistence_id)
        if highest < seq:
            log.warning(
                "%s: snapshot at %d is beyond the journal's highest %d; full replay",
                self.persistence_id,
                seq,
                highest,
                extra=self._log_context(seq),
            )
            state, seq, snap_seq = self.aggregate_type.initial_state, 0, None
            self.keys.clear()
            self.timers.clear()
        state, seq, replayed = await self.replaying_events(state, seq, highest)
        # Numbers up to ``highest`` that the replay did not return are deleted (``delete_to``
        # removes a prefix); they still occupy their numbers: never reuse them.
        seq = max(seq, highest)
        group = list(self.newest_group)
        self.newest_group.clear()
        if self.aggregate_type.tagger is not None and any(e.tags for e in group):
            await self.journal.repair_tags(group)
        await self._repair_timer_index(group)
        stats = RecoveryStats(snap_seq, skipped, replayed, seq, time.perf_counter() - started)
        self.metrics.recovery(self.aggregate_type.name, stats.duration_s)
        log.info(
            "%s: recovered at #%d in %.3f s (snapshot %s, %d events replayed)",
            self.persistence_id,
            seq,
            stats.duration_s,
            "none" if snap_seq is None else f"#{snap_seq}",
            replayed,
            extra=self._log_context(seq),
        )
        return Recovered(state, seq, stats)

    async def replaying_snapshot(self) -> tuple[Any, int, int | None, int]:
        """The newest decodable snapshot: ``(state, sequence_nr, snapshot_sequence_nr or
        None, snapshots skipped)``; the keys and timers tables hold what it saved."""
        max_seq = sys.maxsize
        skipped = 0
        while True:
            snap = await self.snapshot_store.load(self.persistence_id, max_seq)
            self.keys.clear()
            self.timers.clear()
            if snap is None:
                return self.aggregate_type.initial_state, 0, None, skipped
            try:
                ser_id, manifest, payload = self.keys.unwrap_snapshot(  # + its keys, timers
                    snap, on_timers=self.timers.load_lists
                )
                state = self.serialization.decode(
                    ser_id,
                    manifest,
                    payload,
                    persistence_id=self.persistence_id,
                    sequence_nr=snap.sequence_nr,
                )
                return state, snap.sequence_nr, snap.sequence_nr, skipped
            except SerializationError as exc:
                skipped += 1
                log.warning(
                    "%s: cannot decode snapshot at %d, trying an older one: %s",
                    self.persistence_id,
                    snap.sequence_nr,
                    exc,
                    extra=self._log_context(snap.sequence_nr),
                )
                max_seq = snap.sequence_nr - 1
                if max_seq < 1:
                    self.keys.clear()
                    self.timers.clear()
                    return self.aggregate_type.initial_state, 0, None, skipped

    async def replaying_events(self, state: Any, seq: int, to: int) -> tuple[Any, int, int]:
        """Apply the events after ``seq`` up to ``to``: ``(state, sequence_nr, replayed)``."""
        handler = self.aggregate_type.event_handler
        replayed = 0
        group: tuple[str, Any] | None = None  # (writer, timestamp) of the newest group
        self.newest_group.clear()
        if to <= seq:
            return state, seq, replayed
        async for stored in self.journal.replay(self.persistence_id, seq + 1, to):
            event = self.serialization.decode(
                stored.serializer_id,
                stored.manifest,
                stored.payload,
                persistence_id=self.persistence_id,
                sequence_nr=stored.sequence_nr,
            )
            state = handler(state, event)
            seq = stored.sequence_nr
            replayed += 1
            if stored.metadata:
                self.keys.applied(stored)
                self.timers.applied(stored)
            # one flush = one atomic group: same writer, same timestamp
            if (stored.writer_id, stored.timestamp) != group:
                group = (stored.writer_id, stored.timestamp)
                self.newest_group.clear()
            self.newest_group.append(stored)  # kept for the repairs, not re-read
        return state, seq, replayed
