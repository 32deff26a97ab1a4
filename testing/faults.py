"""Fault injection for a journal and a snapshot store: test an aggregate under the failures a
production store has (lost responses, duplicate sends, stalls, a second writer racing).

:class:`FaultyJournal` wraps any :class:`~raysource.journal.api.Journal` (the in-memory one, the
Cassandra one, yours) and :class:`FaultySnapshotStore` any snapshot store. Each call of an
operation passes a *point*: ``"append"``, ``"replay"``, ``"highest"``, ``"repair_tags"``,
``"delete_to"`` (journal), ``"snapshot.load"``, ``"snapshot.save"``, ``"snapshot.keep_newest"``,
``"snapshot.delete"`` (snapshot store). A :class:`Fault` fires at a point — on its ``nth`` call
(scripted), or with a ``probability`` drawn from the wrapper's seeded random (seeded) — at most
``times`` times. The kinds (build them with the functions below):

==================  ========================================================================
``fail()``          raise before sending: nothing stored (``JournalUnavailableError``)
``lose_response()`` let the inner call succeed, then raise ``JournalOutcomeUnknownError``
                    (the response was lost: the write *did* happen)
``duplicate()``     driver-style duplicate send: the inner append runs twice; the caller gets
                    the answer of the second attempt (the first one was applied)
``delay(s)``        sleep ``s`` seconds (``0``: yield to the loop once) before the call
``stall(gate)``     wait for ``gate`` (an ``asyncio.Event`` you set) before the call, or
                    after it with ``after=True`` (the result is held back meanwhile)
``timeout(land)``   raise ``JournalOutcomeUnknownError`` without applying; with ``land`` (an
                    ``asyncio.Event`` or seconds) the write lands later in the background,
                    like a Paxos proposal still in flight (it may then be fenced)
``tag_crash()``     store the events, lose their tag rows, then raise
                    ``JournalOutcomeUnknownError`` (the tag write failed after the batch), or
                    with ``gate`` stall until it is set first (the writer died between the
                    event batch and the tags: kill its activation meanwhile)
``interleave(fn)``  ``await fn()`` at this point (before the call, or after it with
                    ``after=True``): inject a second writer, e.g. another activation's command,
                    at any step of a recovery (``snapshot.load``, ``replay``, ``highest``) or
                    of a flush (``append``)
==================  ========================================================================

Lost tag rows are hidden from ``events_by_tag`` until ``repair_tags`` is called for those
events, which is what a store that writes tag rows apart from the events (Cassandra) shows.

Every append is recorded in :attr:`FaultyJournal.writes` (writer id, sequence numbers, whether
it was stored) and every fired fault in :attr:`FaultyJournal.fired`; the history checker
(:mod:`raysource.testing.history`) uses both. Example::

    journal = FaultyJournal(InMemoryJournal(), [lose_response(nth=2), fail("replay", nth=2)])

Use from one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from raysource.journal.api import Journal, StoredEvent, StoredSnapshot, TaggedEvent, TagOffset
from raysource.journal.errors import (
    JournalOutcomeUnknownError,
    JournalUnavailableError,
)
from raysource.snapshots.api import SnapshotStore

__all__ = [
    "FAULT_KINDS",
    "JOURNAL_POINTS",
    "SNAPSHOT_POINTS",
    "Fault",
    "FaultyJournal",
    "FaultySnapshotStore",
    "Fired",
    "WriteRecord",
    "delay",
    "duplicate",
    "fail",
    "interleave",
    "lose_response",
    "stall",
    "tag_crash",
    "timeout",
]

FAULT_KINDS = (
    "fail",
    "lose_response",
    "duplicate",
    "delay",
    "stall",
    "timeout",
    "tag_crash",
    "interleave",
)
JOURNAL_POINTS = ("append", "replay", "highest", "repair_tags", "delete_to")
SNAPSHOT_POINTS = ("snapshot.load", "snapshot.save", "snapshot.keep_newest", "snapshot.delete")
_WRITES = (
    "append",
    "delete_to",
    "repair_tags",
    "snapshot.save",
    "snapshot.keep_newest",
    "snapshot.delete",
)


@dataclass
class Fault:
    """One fault: ``kind`` at ``point``. Fires on the ``nth`` call of the point (1-based,
    counted per wrapper; None: any call), for ``persistence_id`` only if given, with
    ``probability`` (drawn from the wrapper's seeded random), at most ``times`` times (None:
    unlimited). ``seconds``/``gate``/``action``/``after`` parameterise the kinds (see the
    module docstring)."""

    kind: str
    point: str = "append"
    nth: int | None = None
    persistence_id: str | None = None
    probability: float = 1.0
    times: int | None = 1
    seconds: float | None = None
    gate: asyncio.Event | None = None
    action: Callable[[], Awaitable[Any]] | None = None
    after: bool = False
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {FAULT_KINDS})")
        if self.point not in JOURNAL_POINTS + SNAPSHOT_POINTS:
            raise ValueError(f"unknown point {self.point!r}")
        if self.kind == "duplicate" and self.point not in ("append", "snapshot.save"):
            raise ValueError(
                f"duplicate applies to writes (append, snapshot.save), not {self.point!r}"
            )
        if self.kind == "tag_crash" and self.point != "append":
            raise ValueError(f"tag_crash applies to append, not {self.point!r}")
        if self.kind == "stall" and self.gate is None:
            raise ValueError("stall needs a gate (an asyncio.Event)")
        if self.kind == "interleave" and self.action is None:
            raise ValueError("interleave needs an action (an async callable)")

    def __str__(self) -> str:
        where = f"{self.point}#{self.nth}" if self.nth is not None else self.point
        extra = " after" if self.after else ""
        return f"{self.kind}@{where}{extra}"


def fail(point: str = "append", **kw: Any) -> Fault:
    """Raise ``JournalUnavailableError`` before the call reaches the store (nothing applied)."""
    return Fault("fail", point, **kw)


def lose_response(point: str = "append", **kw: Any) -> Fault:
    """Run the call, then raise ``JournalOutcomeUnknownError`` (applied, response lost)."""
    return Fault("lose_response", point, **kw)


def duplicate(point: str = "append", **kw: Any) -> Fault:
    """Send the write twice (a driver re-send); the caller sees the second answer."""
    return Fault("duplicate", point, **kw)


def delay(seconds: float = 0.0, point: str = "append", **kw: Any) -> Fault:
    """Sleep ``seconds`` before the call (0: yield to the event loop once)."""
    return Fault("delay", point, seconds=seconds, **kw)


def stall(gate: asyncio.Event, point: str = "append", **kw: Any) -> Fault:
    """Wait for ``gate`` before the call (``after=True``: after it, holding the result)."""
    return Fault("stall", point, gate=gate, **kw)


def timeout(
    point: str = "append", *, land: asyncio.Event | float | None = None, **kw: Any
) -> Fault:
    """Raise ``JournalOutcomeUnknownError`` without applying; with ``land`` (an event to wait
    for, or seconds) the write is applied later in the background."""
    if isinstance(land, asyncio.Event):
        return Fault("timeout", point, gate=land, **kw)
    return Fault("timeout", point, seconds=land, **kw)


def tag_crash(point: str = "append", *, gate: asyncio.Event | None = None, **kw: Any) -> Fault:
    """Store the events but lose their tag rows; raise ``JournalOutcomeUnknownError`` (with
    ``gate``: stall until it is set first, like a writer that died in between)."""
    return Fault("tag_crash", point, gate=gate, **kw)


def interleave(action: Callable[[], Awaitable[Any]], point: str = "append", **kw: Any) -> Fault:
    """``await action()`` at ``point`` (before the call; ``after=True``: after it)."""
    return Fault("interleave", point, action=action, **kw)


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One append attempt. In :attr:`FaultyJournal.writes` (what reached the inner store):
    ``stored`` True/False and ``answer`` the store's (``"ok"`` or the error's class name);
    ``how`` is ``"sent"``, ``"resent"`` (duplicate) or ``"late"`` (a timed-out write landing).
    In :attr:`FaultyJournal.answers` (what the writer was told): ``stored`` is None."""

    persistence_id: str
    writer_id: str
    first: int
    last: int
    stored: bool | None
    answer: str
    how: str = ""


@dataclass(frozen=True, slots=True)
class Fired:
    """A fault that fired: its description, the point and the call number."""

    fault: str
    point: str
    call: int
    persistence_id: str | None


class _Injector:
    """Shared by both wrappers: counts calls per point and picks the faults that fire."""

    def __init__(self, faults: Iterable[Fault], seed: int | None) -> None:
        self.faults: list[Fault] = list(faults)
        self.random = random.Random(seed)
        self.calls: Counter[str] = Counter()
        self.fired: list[Fired] = []
        self.enabled = True

    def add(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def take(self, point: str, pid: str | None) -> list[Fault]:
        self.calls[point] += 1
        n = self.calls[point]
        if not self.enabled:
            return []
        out = []
        for f in self.faults:
            if f.point != point or (f.nth is not None and f.nth != n):
                continue
            if f.persistence_id is not None and f.persistence_id != pid:
                continue
            if f.times is not None and f.fired >= f.times:
                continue
            if f.probability < 1.0 and self.random.random() >= f.probability:
                continue
            f.fired += 1
            self.fired.append(Fired(str(f), point, n, pid))
            out.append(f)
        return out

    async def call(
        self,
        point: str,
        pid: str | None,
        fn: Callable[[], Awaitable[Any]],
        write: Callable[[], Awaitable[Any]] | None = None,
        late: Callable[[], Awaitable[Any]] | None = None,
        lose_tags: Callable[[], None] | None = None,
    ) -> Any:
        """Run ``fn`` under the faults firing at this call. ``write`` (default ``fn``) is
        what a duplicate re-sends, ``late`` (default ``write``) what a timed-out write lands;
        ``lose_tags`` hides the tag rows of the call's events (tag_crash)."""
        faults = self.take(point, pid)
        write = write or fn
        late = late or write
        for f in faults:  # the "before" part of every fault, in order
            if f.kind == "fail":
                raise JournalUnavailableError(f"injected: {f} (nothing was sent)")
            if f.kind == "timeout":
                if f.gate is not None or f.seconds is not None:
                    _background(_land_later(late, f))
                raise JournalOutcomeUnknownError(f"injected: {f} (not applied yet)")
            if not f.after and f.kind in ("delay", "stall", "interleave"):
                await _pause(f)
        result = await fn()
        if lose_tags is not None and any(f.kind == "tag_crash" for f in faults):
            lose_tags()  # the tag rows were never written (what happens next may repair them)
        for f in faults:
            if f.kind == "duplicate":
                result = await write()
            elif f.kind == "lose_response":
                raise JournalOutcomeUnknownError(f"injected: {f} (the call was applied)")
            elif f.kind == "tag_crash":
                if f.gate is not None:
                    await f.gate.wait()
                raise JournalOutcomeUnknownError(f"injected: {f} (stored, tag rows lost)")
            elif f.after and f.kind in ("delay", "stall", "interleave"):
                await _pause(f)
        return result


async def _pause(f: Fault) -> None:
    if f.kind == "delay":
        await asyncio.sleep(f.seconds or 0)
    elif f.kind == "stall":
        assert f.gate is not None
        await f.gate.wait()
    elif f.kind == "interleave":
        assert f.action is not None
        await f.action()


async def _land_later(write: Callable[[], Awaitable[Any]], f: Fault) -> None:
    if f.gate is not None:
        await f.gate.wait()
    else:
        await asyncio.sleep(f.seconds or 0)
    try:
        await write()
    except Exception:  # fenced or failed: the late landing did not happen
        pass


_tasks: set[asyncio.Task] = set()


def _background(coro: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class _Controls:
    """What both wrappers offer to steer and inspect their faults."""

    _inj: _Injector

    def add(self, *faults: Fault) -> None:
        """Arm more faults."""
        self._inj.add(*faults)

    @property
    def faults(self) -> list[Fault]:
        return self._inj.faults

    @property
    def fired(self) -> list[Fired]:
        """Every fault that fired, in order."""
        return self._inj.fired

    @property
    def calls(self) -> Counter[str]:
        """Calls per point so far (for scripting ``nth``)."""
        return self._inj.calls

    @property
    def faults_enabled(self) -> bool:
        return self._inj.enabled

    @faults_enabled.setter
    def faults_enabled(self, value: bool) -> None:
        self._inj.enabled = value


class FaultyJournal(_Controls, Journal):
    """A :class:`Journal` that delegates to ``inner`` and injects ``faults`` (see the module
    docstring). ``seed`` seeds the random of probabilistic faults. ``faults_enabled`` turns
    injection off and on (e.g. off while the history checker reads the journal)."""

    def __init__(
        self, inner: Journal, faults: Iterable[Fault] = (), *, seed: int | None = None
    ) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self._inj = _Injector(faults, seed)
        self.writes: list[WriteRecord] = []  # every attempt that reached the inner store
        self.answers: list[WriteRecord] = []  # what each append call answered its writer
        self.lost_tags: set[tuple[str, int]] = set()
        self.persistence_ids: set[str] = set()

    max_group_size = property(lambda self: self.inner.max_group_size)

    # ------------------------------------------------------------------ Journal

    async def begin_activation(self, persistence_id: str, writer_id: str) -> None:
        await self.inner.begin_activation(persistence_id, writer_id)  # the epoch claim, if any

    async def end_activation(self, persistence_id: str, writer_id: str) -> None:
        await self.inner.end_activation(persistence_id, writer_id)

    async def confirm_activation(self, persistence_id: str, writer_id: str) -> bool | None:
        return await self.inner.confirm_activation(persistence_id, writer_id)

    async def append(self, events: Sequence[StoredEvent]) -> None:
        events = list(events)
        if not events:
            return await self.inner.append(events)
        pid, writer = events[0].persistence_id, events[0].writer_id
        first, last = events[0].sequence_nr, events[-1].sequence_nr
        self.persistence_ids.add(pid)

        async def write(how: str) -> None:
            try:
                await self.inner.append(events)
            except Exception as exc:
                self.writes.append(
                    WriteRecord(pid, writer, first, last, False, type(exc).__name__, how)
                )
                raise
            self.writes.append(WriteRecord(pid, writer, first, last, True, "ok", how))

        def lose_tags() -> None:
            self.lost_tags.update((e.persistence_id, e.sequence_nr) for e in events if e.tags)

        try:
            await self._inj.call(
                "append",
                pid,
                lambda: write("sent"),
                lambda: write("resent"),
                lambda: write("late"),
                lose_tags,
            )
        except BaseException as exc:
            self.answers.append(WriteRecord(pid, writer, first, last, None, type(exc).__name__))
            raise
        self.answers.append(WriteRecord(pid, writer, first, last, None, "ok"))

    async def replay(
        self, persistence_id: str, from_sequence_nr: int = 1, to_sequence_nr: int | None = None
    ) -> AsyncGenerator[StoredEvent, None]:
        self.persistence_ids.add(persistence_id)
        faults = self._inj.take("replay", persistence_id)
        for f in faults:
            if f.kind in ("fail", "timeout"):
                raise JournalUnavailableError(f"injected: {f} (replay failed)")
            if not f.after:
                await _pause(f)
        async for ev in self.inner.replay(persistence_id, from_sequence_nr, to_sequence_nr):
            yield ev
        for f in faults:
            if f.kind == "lose_response":
                raise JournalUnavailableError(f"injected: {f} (replay read, then failed)")
            if f.after and f.kind in ("delay", "stall", "interleave"):
                await _pause(f)

    async def highest_sequence_nr(self, persistence_id: str) -> int:
        self.persistence_ids.add(persistence_id)
        return await self._inj.call(
            "highest", persistence_id, lambda: self.inner.highest_sequence_nr(persistence_id)
        )

    async def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        await self._inj.call(
            "delete_to",
            persistence_id,
            lambda: self.inner.delete_to(persistence_id, to_sequence_nr),
        )

    async def repair_tags(self, events: Sequence[StoredEvent]) -> int:
        events = list(events)
        pid = events[0].persistence_id if events else None

        async def repair() -> int:
            n = await self.inner.repair_tags(events)
            repaired = {(e.persistence_id, e.sequence_nr) for e in events if e.tags}
            hidden = repaired & self.lost_tags
            self.lost_tags -= repaired
            return n or sum(1 for e in events if (e.persistence_id, e.sequence_nr) in hidden)

        return await self._inj.call("repair_tags", pid, repair)

    async def events_by_tag(
        self, tag: str, after: TagOffset | None = None, *, limit: int | None = None
    ) -> AsyncGenerator[TaggedEvent, None]:
        n = 0
        async for te in self.inner.events_by_tag(tag, after):
            if (te.event.persistence_id, te.event.sequence_nr) in self.lost_tags:
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield te

    async def close(self) -> None:
        await self.inner.close()


class FaultySnapshotStore(_Controls, SnapshotStore):
    """A :class:`SnapshotStore` that delegates to ``inner`` and injects ``faults`` at the
    ``snapshot.*`` points (``fail``, ``lose_response``, ``duplicate``, ``delay``, ``stall``,
    ``timeout``, ``interleave``)."""

    def __init__(
        self, inner: SnapshotStore, faults: Iterable[Fault] = (), *, seed: int | None = None
    ) -> None:
        self.inner = inner
        self._inj = _Injector(faults, seed)

    async def save(self, snapshot: StoredSnapshot) -> None:
        await self._inj.call(
            "snapshot.save", snapshot.persistence_id, lambda: self.inner.save(snapshot)
        )

    async def load(
        self, persistence_id: str, max_sequence_nr: int = 2**63 - 1
    ) -> StoredSnapshot | None:
        return await self._inj.call(
            "snapshot.load",
            persistence_id,
            lambda: self.inner.load(persistence_id, max_sequence_nr),
        )

    async def keep_newest(self, persistence_id: str, keep: int) -> None:
        await self._inj.call(
            "snapshot.keep_newest",
            persistence_id,
            lambda: self.inner.keep_newest(persistence_id, keep),
        )

    async def delete(self, persistence_id: str, sequence_nr: int) -> None:
        await self._inj.call(
            "snapshot.delete",
            persistence_id,
            lambda: self.inner.delete(persistence_id, sequence_nr),
        )

    async def close(self) -> None:
        await self.inner.close()
