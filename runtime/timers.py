"""Durable timers inside an activation: the pending-timer table and how schedules are journaled.

Ray-free; used by the entity core (:mod:`raysource.runtime.core`). The user's side is
``persist(..., schedule=schedule(name, command, after=...), cancel=name)``
(:mod:`raysource.runtime.aggregate`); the timer services that fire due timers are
:mod:`raysource.sharding.timer_service`; the index they read is :mod:`raysource.timers`.

**Journaled with the events.** The first event of a command that schedules or cancels
timers carries them in its metadata, in the same atomic append as the events:

* ``"ts"``: JSON ``[[name, due epoch ms, bucket, encoded command], ...]`` (new timers; a name
  that is pending is replaced). The timer's id is ``"<name>@<sequence nr of that event>"``.
* ``"tc"``: JSON ``[name, ...]`` (cancelled; applied before ``"ts"``).
* ``"tf"``: the id of the timer whose fire produced this command (applied first).

Replaying the journal therefore rebuilds exactly the pending timers (:meth:`TimerTable.applied`);
snapshots carry the table (the keyed-snapshot envelope of :mod:`raysource.runtime.idempotency`).

**Firing.** A timer service sends :class:`TimerFire` (under the idempotency key
``"timer:<id>"``; keys with that prefix are refused on any other command, so a caller's key
cannot shadow a fire). A fire that arrives more than a second before its timer's due time (a
service clock ahead, a fire sent by hand) runs nothing: ``TimerNotDueError``, still pending. The
core runs the timer's command *from its own table* (not from the index row) only if that exact id is
still pending; anything else (cancelled, replaced, fired already) is a *stale* fire, answered
``None`` with nothing run. So a timer is applied at most once even when fired twice, by two services
during a handoff, or after its cancel was journaled but before its index row was deleted. A fire
whose command persists events is journaled as fired (``"tf"``); a fire whose command writes nothing
(a reply, a rejection, a no-op) has no event to carry that, so the activation saves a snapshot (its
table without the timer) right after it: recoveries start from there and do not bring the timer back
(without it, one whose schedule is the newest group would be re-indexed and run again, and any other
would stay pending with no index row). Only if that snapshot cannot be written may a later
recovery bring it back, to fire once more against a state that did not change in between.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from raysource.journal.api import StoredEvent
from raysource.journal.errors import CorruptPayloadError, PayloadTooLargeError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import Schedule
from raysource.runtime.idempotency import _join, _split
from raysource.runtime.tracing import TRACEPARENT, TRACESTATE
from raysource.timers.api import DEFAULT_BUCKET_MS, TimerRow, bucket_of

__all__ = [
    "CANCEL_FIELD",
    "FIRED_FIELD",
    "SCHEDULE_FIELD",
    "Pending",
    "TimerFire",
    "TimerTable",
    "fire_key",
]

SCHEDULE_FIELD = "ts"
CANCEL_FIELD = "tc"
FIRED_FIELD = "tf"


@dataclass(frozen=True, slots=True)
class TimerFire:
    """What a timer service sends: fire the pending timer ``timer_id`` (named ``name``).
    ``traceparent``/``tracestate``: the trace context of its index row (the scheduling
    command's append; "" when none): the fire's span continues that trace."""

    name: str
    timer_id: str
    traceparent: str = ""
    tracestate: str = ""


TIMER_KEY_PREFIX = "timer:"  # reserved: only fires are keyed with it
EARLY_FIRE_TOLERANCE_MS = 1_000  # clock skew between a timer service and an aggregate


def fire_key(timer_id: str) -> str:
    """The idempotency key a fire of ``timer_id`` is sent under."""
    return f"{TIMER_KEY_PREFIX}{timer_id}"


def _parse(event: StoredEvent) -> tuple[str | None, list[str], list[Pending]]:
    """(fired id, cancelled names, new timers) of an event's metadata."""
    meta = event.metadata
    try:
        cancels = json.loads(meta[CANCEL_FIELD]) if CANCEL_FIELD in meta else []
        schedules = [
            Pending(
                name,
                f"{name}@{event.sequence_nr}",
                int(due_ms),
                int(bucket),
                command,
                meta.get(TRACEPARENT, ""),
                meta.get(TRACESTATE, ""),
            )
            for name, due_ms, bucket, command in (
                json.loads(meta[SCHEDULE_FIELD]) if SCHEDULE_FIELD in meta else []
            )
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptPayloadError(
            f"corrupt timer metadata: {exc}",
            persistence_id=event.persistence_id,
            sequence_nr=event.sequence_nr,
        ) from exc
    return meta.get(FIRED_FIELD), [str(n) for n in cancels], schedules


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@dataclass(slots=True)
class Pending:
    """One pending timer of an activation. ``command`` stays encoded until it fires."""

    name: str
    timer_id: str
    due_ms: int
    bucket: int  # of its index row, as last written
    command: str
    # the W3C trace context of the scheduling command's append (runtime.tracing), from the
    # journal; written into the index row, which the fire brings back (snapshots keep no trace)
    trace: str = ""
    tracestate: str = ""

    def to_list(self) -> list[Any]:
        return [self.name, self.timer_id, self.due_ms, self.bucket, self.command]


class TimerTable:
    """The pending timers of one activation of ``persistence_id`` (type ``type_name``, shard
    ``shard``). ``bucket_ms``: the timer store's bucket width."""

    def __init__(
        self,
        serialization: Serialization,
        type_name: str,
        persistence_id: str,
        shard: int,
        bucket_ms: int = DEFAULT_BUCKET_MS,
    ) -> None:
        self.serialization = serialization
        self.type_name = type_name
        self.persistence_id = persistence_id
        self.shard = shard
        self.bucket_ms = bucket_ms
        self.pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def clear(self) -> None:
        self.pending.clear()

    # ------------------------------------------------------------------ deciding

    def metadata(
        self,
        schedules: Sequence[Schedule],
        cancels: Sequence[str],
        timestamp: datetime,
        sequence_nr: int,
    ) -> dict[str, str]:
        """The metadata of the first event (number ``sequence_nr``) of a command that
        schedules/cancels timers. Raises the serialization's error for an unencodable
        command, ``PayloadTooLargeError`` if the schedules together exceed the payload limit
        (the command then fails, nothing written)."""
        meta: dict[str, str] = {}
        if cancels:
            meta[CANCEL_FIELD] = json.dumps(list(dict.fromkeys(cancels)))
        if schedules:
            now_ms = _ms(timestamp)
            entries = []
            for s in schedules:
                due = _ms(s.due(timestamp))
                cmd = _join(
                    *self.serialization.encode(
                        s.command, persistence_id=self.persistence_id, sequence_nr=sequence_nr
                    )
                )
                entries.append([s.name, due, bucket_of(due, now_ms, self.bucket_ms), cmd])
            meta[SCHEDULE_FIELD] = json.dumps(entries)
            if len(meta[SCHEDULE_FIELD]) > self.serialization.max_payload_bytes:
                raise PayloadTooLargeError(
                    f"{len(schedules)} timers of one persist take {len(meta[SCHEDULE_FIELD])} "
                    f"bytes, over the payload limit of {self.serialization.max_payload_bytes}",
                    persistence_id=self.persistence_id,
                    sequence_nr=sequence_nr,
                )
        return meta

    def due_ms_of(self, fire: TimerFire, overlay: dict[str, Pending | None]) -> int | None:
        """The due time of ``fire``'s timer if that exact timer is pending, else None."""
        p = overlay[fire.name] if fire.name in overlay else self.pending.get(fire.name)
        return p.due_ms if p is not None and p.timer_id == fire.timer_id else None

    def trace_of(self, fire: TimerFire, overlay: dict[str, Pending | None]) -> dict[str, str]:
        """The W3C headers of the trace ``fire``'s timer was scheduled in ({} if none or not
        pending): the table's (from the journal), else the fire's (from its index row: the
        activation was restored from a snapshot, which keeps no trace)."""
        p = overlay[fire.name] if fire.name in overlay else self.pending.get(fire.name)
        if p is None or p.timer_id != fire.timer_id:
            return {}
        parent, state = (p.trace, p.tracestate) if p.trace else (fire.traceparent, fire.tracestate)
        if not parent:
            return {}
        return {TRACEPARENT: parent, TRACESTATE: state} if state else {TRACEPARENT: parent}

    def command_of(self, fire: TimerFire, overlay: dict[str, Pending | None]) -> Any | None:
        """The decoded command of ``fire`` if that exact timer is pending (``overlay``: the
        tentative changes of the flush being built), else None (a stale fire)."""
        p = overlay[fire.name] if fire.name in overlay else self.pending.get(fire.name)
        if p is None or p.timer_id != fire.timer_id:
            return None
        ser_id, manifest, payload = _split(p.command)
        return self.serialization.decode(
            ser_id, manifest, payload, persistence_id=self.persistence_id
        )

    # ------------------------------------------------------------------ applying

    def applied(self, event: StoredEvent) -> tuple[list[TimerRow], list[TimerRow]]:
        """Apply the timer metadata of ``event`` (written or replayed); returns the index
        rows to write and to delete."""
        if not event.metadata:
            return [], []
        fired, cancels, schedules = _parse(event)
        upserts: list[TimerRow] = []
        deletes: list[TimerRow] = []
        if fired is not None:
            p = self.pending.get(fired.rsplit("@", 1)[0])
            if p is not None and p.timer_id == fired:
                del self.pending[p.name]  # its row is deleted by the service that fired it
        for name in cancels:
            old = self.pending.pop(name, None)
            if old is not None:
                deletes.append(self.row(old))
        for p in schedules:
            old = self.pending.get(p.name)
            if old is not None:
                deletes.append(self.row(old))
            self.pending[p.name] = p
            upserts.append(self.row(p))
        return upserts, deletes

    def tentative(self, event: StoredEvent, overlay: dict[str, Pending | None]) -> None:
        """Apply the timer metadata of a not yet written ``event`` to ``overlay`` (the flush's
        view on top of :attr:`pending`), so a later fire in the same flush sees it."""
        fired, cancels, schedules = _parse(event)
        if fired is not None:
            overlay[fired.rsplit("@", 1)[0]] = None
        for name in cancels:
            overlay[name] = None
        for p in schedules:
            overlay[p.name] = p

    def scheduled_in(self, event: StoredEvent) -> list[str]:
        """The names ``event`` schedules that are still pending under the id it gave them."""
        if not event.metadata or SCHEDULE_FIELD not in event.metadata:
            return []
        _fired, _cancels, schedules = _parse(event)
        return [
            p.name
            for p in schedules
            if p.name in self.pending and self.pending[p.name].timer_id == p.timer_id
        ]

    def fired_without_events(self, fire: TimerFire) -> bool:
        """Forget a timer whose fire wrote nothing (the caller snapshots the table: see the
        module docstring); True if it was pending."""
        p = self.pending.get(fire.name)
        if p is not None and p.timer_id == fire.timer_id:
            del self.pending[fire.name]
            return True
        return False

    def row(self, p: Pending) -> TimerRow:
        return TimerRow(
            self.type_name,
            self.shard,
            p.bucket,
            p.due_ms,
            self.persistence_id,
            p.name,
            p.timer_id,
            p.trace,
            p.tracestate,
        )

    def rows_now(self, names: Iterable[str], now: datetime) -> list[TimerRow]:
        """Index rows for the pending timers ``names`` in a bucket at or after ``now`` (a
        repair, or a row write that took too long): their recorded bucket moves there."""
        now_ms = _ms(now)
        out = []
        for name in names:
            p = self.pending.get(name)
            if p is not None:
                p.bucket = max(p.bucket, bucket_of(p.due_ms, now_ms, self.bucket_ms))
                out.append(self.row(p))
        return out

    # ------------------------------------------------------------------ snapshots

    def to_lists(self) -> list[list[Any]]:
        return [p.to_list() for p in self.pending.values()]

    def load_lists(self, items: Iterable[Sequence[Any]]) -> None:
        """Load a snapshot's timers; raises ``CorruptPayloadError`` for a malformed entry (the
        recovery then takes an older snapshot, as for an undecodable state)."""
        self.pending.clear()
        try:
            for name, timer_id, due_ms, bucket, command in items:
                if not all(isinstance(v, str) for v in (name, timer_id, command)):
                    raise TypeError(f"not a timer entry: {[name, timer_id, command]!r}")
                self.pending[name] = Pending(name, timer_id, int(due_ms), int(bucket), command)
        except (ValueError, TypeError) as exc:
            self.pending.clear()
            raise CorruptPayloadError(
                f"corrupt timers in snapshot: {exc}", persistence_id=self.persistence_id
            ) from exc

    def info(self) -> list[dict[str, Any]]:
        """The pending timers (diagnostics)."""
        return [
            {"name": p.name, "timer_id": p.timer_id, "due_ms": p.due_ms}
            for p in sorted(self.pending.values(), key=lambda p: p.due_ms)
        ]
