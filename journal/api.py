"""The journal SPI: what every event store behind raysource promises.

A journal stores, per persistence id, a gap-free sequence of events numbered 1, 2, 3, ...
It is append-only: the write path never updates or deletes a row (``delete_to`` is logical).

Contract (checked for every backend by ``tests/contract``):

* ``append`` writes an *atomic group* of events of one persistence id. The group's sequence
  numbers are contiguous and start at the number the writer expects to be next. Either the whole
  group becomes durable and readable, or none of it does.
* With the fencing guard on (``capabilities.fencing``), an append whose sequence numbers are
  (partly) taken raises :class:`~raysource.journal.errors.ConcurrentWriteError` and writes nothing.
  Two writers on one persistence id therefore can never both append the same sequence number; the
  loser learns it is stale. An append of a group that is already stored exactly (every number
  held by the same writer with the same payload: the same append delivered twice) is a success
  that writes nothing. With the guard off, the backend documents what happens instead.
* A failed ``append`` says whether it may have written: ``JournalOutcomeUnknownError`` (an
  :class:`~raysource.journal.errors.OutcomeUnknownError`) when the group may be stored or may
  still land (sent, unconfirmed); any other ``JournalError`` (``ConcurrentWriteError``,
  ``InvalidAppendError``, ``JournalUnavailableError``) only when nothing of it was written and
  nothing can land later. A backend that cannot tell raises ``JournalOutcomeUnknownError``.
* A writer announces an activation with ``begin_activation(persistence_id, writer_id)`` before
  it reads its history, and ``end_activation`` when it stops (both no-ops by default). The
  Cassandra journal's epoch guard claims a new epoch there (one conditional write per
  activation); afterwards an append of that writer fails with
  :class:`~raysource.journal.errors.WriterFencedError` — an outcome-unknown error, never "not
  applied" — once a newer activation has claimed, or when one of its writes was not confirmed;
  the writer must then stop.
* ``replay`` streams events in ascending sequence order, paged, with bounded memory however long
  the history is. Events at or below the deleted-to mark are not returned.
* ``highest_sequence_nr`` is the largest sequence number ever appended (deletes do not lower it).
* ``events_by_tag`` streams events carrying a tag in a stable, resumable offset order (see the
  backend's docstring for its visibility delay).

Every method is a coroutine (or async iterator) and never blocks the event loop.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from raysource.journal.errors import InvalidAppendError


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One serialized event as the journal stores it.

    ``timestamp`` is the writer's wall clock (UTC) when the group was created; ``writer_id``
    identifies the activation that wrote it (for diagnosing fencing conflicts);
    ``metadata`` is free-form string pairs (correlation ids and the like).
    """

    persistence_id: str
    sequence_nr: int
    payload: bytes
    manifest: str
    serializer_id: int
    timestamp: datetime
    writer_id: str = ""
    tags: frozenset[str] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, order=True)
class TagOffset:
    """A position in one tag's stream. Opaque to users, serializable, totally ordered.

    Resuming ``events_by_tag`` from an offset returns only events strictly after it.
    Backends fill the fields as their ordering requires; compare offsets of one tag only.
    """

    timestamp_us: int
    persistence_id: str = ""
    sequence_nr: int = 0

    @classmethod
    def start(cls) -> TagOffset:
        return cls(0, "", 0)


@dataclass(frozen=True, slots=True)
class TaggedEvent:
    """An event delivered by a tag query, with the offset to resume after it."""

    tag: str
    offset: TagOffset
    event: StoredEvent


@dataclass(frozen=True, slots=True)
class JournalCapabilities:
    """Optional behaviour a backend declares (the contract suite skips checks it lacks)."""

    fencing: bool = True  # conditional appends: ConcurrentWriteError on taken sequence numbers
    tags: bool = True  # events_by_tag
    delete: bool = True  # delete_to


def validate_group(events: Sequence[StoredEvent], max_group_size: int | None = None) -> None:
    """Raise ``InvalidAppendError`` unless ``events`` is a well-formed atomic group.

    Part of the SPI: every backend calls it first, so all of them reject exactly the same
    inputs (the contract suite checks the cases).
    """
    if not events:
        raise InvalidAppendError("empty append: an atomic group needs at least one event")
    pid = events[0].persistence_id
    if not isinstance(pid, str) or not pid:
        raise InvalidAppendError(f"invalid persistence id {pid!r}")
    first = events[0].sequence_nr
    if not isinstance(first, int) or first < 1:
        raise InvalidAppendError(f"first sequence number must be >= 1, got {first!r} ({pid!r})")
    for i, ev in enumerate(events):
        if not isinstance(ev, StoredEvent):
            raise InvalidAppendError(f"not a StoredEvent: {ev!r}")
        if ev.persistence_id != pid:
            raise InvalidAppendError(
                f"mixed persistence ids in one group: {pid!r} and {ev.persistence_id!r}"
            )
        if ev.sequence_nr != first + i:
            raise InvalidAppendError(
                f"non-contiguous sequence numbers in group for {pid!r}: expected "
                f"{first + i}, got {ev.sequence_nr!r}"
            )
        if not isinstance(ev.payload, (bytes, bytearray)):
            raise InvalidAppendError(f"payload of {pid!r}#{ev.sequence_nr} is not bytes")
    if max_group_size is not None and len(events) > max_group_size:
        raise InvalidAppendError(
            f"group of {len(events)} events for {pid!r} exceeds the maximum of "
            f"{max_group_size} (the partition size)"
        )


class Journal(abc.ABC):
    """An append-only, per-persistence-id event log. See the module docstring for the contract."""

    capabilities: JournalCapabilities = JournalCapabilities()
    #: The most events one ``append`` may carry (None: no limit). Writers that batch (group
    #: commit) stay at or below it; a larger group is an ``InvalidAppendError``.
    max_group_size: int | None = None

    @abc.abstractmethod
    async def append(self, events: Sequence[StoredEvent]) -> None:
        """Durably write ``events`` as one atomic group.

        All events share one persistence id and carry contiguous sequence numbers; the first
        is the number the writer expects to be next (``highest_sequence_nr + 1``).
        Raises ``InvalidAppendError`` for a malformed group (nothing written),
        ``ConcurrentWriteError`` when fenced (nothing written), ``JournalUnavailableError``
        when the store could not be reached (nothing written), ``JournalOutcomeUnknownError``
        when the group may or may not be stored, or may still land (re-read before deciding;
        never append other events at these numbers from this writer's assumed state).
        Appending a group that is already stored exactly (same writer, numbers, payloads)
        returns normally.
        """

    @abc.abstractmethod
    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int | None = None,
    ) -> AsyncGenerator[StoredEvent, None]:
        """Stream events ``from_sequence_nr..to_sequence_nr`` (inclusive) in ascending order.

        Paged: memory stays bounded for any history length. Deleted events are skipped.
        """

    @abc.abstractmethod
    async def highest_sequence_nr(self, persistence_id: str) -> int:
        """The highest sequence number ever appended for ``persistence_id`` (0 if none)."""

    @abc.abstractmethod
    async def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        """Logically delete events up to ``to_sequence_nr``; they are no longer replayed.

        ``highest_sequence_nr`` is unchanged, so sequence numbers are never reused.
        """

    @abc.abstractmethod
    def events_by_tag(
        self,
        tag: str,
        after: TagOffset | None = None,
        *,
        limit: int | None = None,
    ) -> AsyncGenerator[TaggedEvent, None]:
        """Stream the events tagged ``tag`` strictly after ``after``, in offset order, up to
        what is currently visible (a "current" query: the iterator completes)."""

    async def begin_activation(self, persistence_id: str, writer_id: str) -> None:
        """Start an activation of ``writer_id`` (unique per activation: the journal keys the
        activation's claim by it) on ``persistence_id``: called once, BEFORE the activation
        reads its history (``highest_sequence_nr``, ``replay``). A backend that
        fences per activation claims here; a failure (any ``JournalError``) means the
        activation must not start (nothing of it was written). Default: nothing."""

    async def begin_activations(
        self, activations: Sequence[tuple[str, str]], *, concurrency: int = 32
    ) -> list[BaseException | int | None]:
        """:meth:`begin_activation` for many ``(persistence_id, writer_id)`` pairs at once (a
        host activating many aggregates together); one outcome per pair, in order: an
        exception (that activation must not start; nothing of it was written), or the
        activation's highest sequence number when the claim already read it (the activation
        may use it instead of calling ``highest_sequence_nr``: 0 means a log with no event,
        where nothing is left to read), or None (unknown: read it as usual). Every activation
        still reads its history only after its own claim. Default: :meth:`begin_activation`
        for each, at most ``concurrency`` at a time, highest unknown."""
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(pid: str, writer: str) -> None:
            async with gate:
                await self.begin_activation(pid, writer)

        outcomes = await asyncio.gather(
            *(one(p, w) for p, w in activations), return_exceptions=True
        )
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    async def end_activation(self, persistence_id: str, writer_id: str) -> None:
        """The activation ended (passivated or stopped); release what it held in this
        process. Default: nothing."""

    async def confirm_activation(self, persistence_id: str, writer_id: str) -> bool | None:
        """Is ``writer_id``'s activation still the writer of ``persistence_id``, by a read
        sent after this call? A backend that fences per activation answers True (no newer
        activation has claimed: whatever this activation decided from its own state is
        current) or False (a newer one claimed, or this activation's claim ended); the
        writer must then stop. Raises a ``JournalError`` if it cannot tell. Default: None
        (no per-activation fence)."""
        return None

    async def repair_tags(self, events: Sequence[StoredEvent]) -> int:
        """Make sure these stored events (one persistence id, as read back by ``replay``) are
        in their tags' streams; returns how many tag rows were (re-)written.

        A backend that writes tag rows apart from the events (Cassandra: after the events'
        batch, before acknowledging) leaves them missing when the writer dies, or its tag
        write fails, in between. The entity core calls this for the newest atomic group when
        it recovers, before it accepts commands. Re-written rows get a fresh offset, so a
        reader may see an event twice (tag delivery is at-least-once; readers dedupe by
        ``(persistence_id, sequence_nr)``). Backends that store tags atomically with the
        events (the in-memory journal) have nothing to repair.
        """
        return 0

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A serialized snapshot of an aggregate's state after ``sequence_nr`` events."""

    persistence_id: str
    sequence_nr: int
    payload: bytes
    manifest: str
    serializer_id: int
    timestamp: datetime
