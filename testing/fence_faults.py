"""Deterministic fault schedules for the epoch guard (``design/fencing.md`` §6), on a real store.

The Cassandra journal calls ``await journal.hook(step, **info)`` at the protocol's named steps
(``claim.before``, ``claim.after``, ``record.before``, ``record.after``, ``append.before_w1``,
``append.after_w1``, ``append.after_fence``). :class:`Gates` is such a hook: ``hold(step)``
returns a :class:`Gate` that stops the first writer reaching that step until the test releases
it — a writer paused between its write and its fence read, or a write held and sent (with a
later client timestamp) after a newer activation acknowledged the same number.

:class:`Writer` is one activation (claim, recovery read, appends) recording into a
:class:`~raysource.testing.fence_history.FenceHistory`; the ``schedule_*`` functions play the
schedules S1, S2, S3, S5 and S8 and return the history, whose ``problems()`` must be empty
(S4, S6, S7, S9, S10 and S11: :mod:`raysource.testing.fence_schedules`).
``make_journal()`` gives each writer its own journal (as on its own host).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import JournalError
from raysource.testing.fence_history import AppendOp, FenceHistory

__all__ = [
    "Gate",
    "Gates",
    "Writer",
    "schedule_s1",
    "schedule_s2",
    "schedule_s3",
    "schedule_s5",
    "schedule_s8",
    "final_log",
]


@dataclass
class Gate:
    """Holds the first caller that reaches ``step`` (with ``match``ing info) until released."""

    step: str
    match: dict[str, Any]
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    info: dict[str, Any] = field(default_factory=dict)
    used: bool = False

    def release(self) -> None:
        self.released.set()


class Gates:
    """A journal hook with gates at named steps (see the module docstring)."""

    def __init__(self) -> None:
        self._gates: list[Gate] = []
        self.seen: list[str] = []

    def hold(self, step: str, **match: Any) -> Gate:
        gate = Gate(step, match)
        self._gates.append(gate)
        return gate

    async def __call__(self, step: str, **info: Any) -> None:
        self.seen.append(step)
        for gate in self._gates:
            if gate.used or gate.step != step:
                continue
            if all(info.get(k) == v for k, v in gate.match.items()):
                gate.used, gate.info = True, info
                gate.reached.set()
                await gate.released.wait()
                return


def _event(pid: str, seq: int, writer: str, tag: str | None = None) -> StoredEvent:
    return StoredEvent(
        pid,
        seq,
        f"{writer}:{seq}".encode(),
        "fence.E#1",
        1,
        datetime.now(UTC),
        writer,
        frozenset({tag}) if tag else frozenset(),
    )


class Writer:
    """One activation of ``pid`` named ``name`` on its own ``journal``.

    ``tag``: its events carry this tag, and its recovery re-writes the tag rows of the last
    ``repair`` events it recovered (as the entity core repairs its newest group), after its
    claim is confirmed — or, with ``tags_before_confirm`` (a deliberately broken build, S7),
    before: at its record step, from the chain it read."""

    def __init__(
        self,
        journal: Journal,
        pid: str,
        name: str,
        history: FenceHistory,
        *,
        tag: str | None = None,
        repair: int = 1,
        tags_before_confirm: bool = False,
    ) -> None:
        self.journal, self.pid, self.name, self.history = journal, pid, name, history
        self.tag, self.repair, self.tags_before_confirm = tag, repair, tags_before_confirm
        self.gates = Gates()
        self.next_seq = 1
        self.epoch = 0
        self._op: AppendOp | None = None
        journal.hook = self._hook  # type: ignore[attr-defined]

    async def _hook(self, step: str, **info: Any) -> None:
        if step == "append.before_w1" and self._op is not None:
            self._op.sent = True  # from here on the events may reach the store
        if step == "record.before" and self.tags_before_confirm and self.tag:
            await self._repair_tail(info["epoch"])  # the broken order: before confirming
        await self.gates(step, **info)

    async def _repair_tail(self, epoch: int) -> None:
        j: Any = self.journal
        view = await j.epochs.view(self.pid, below=epoch)
        tail = [e async for n, ep, e in j._rows(self.pid, 1, view.h) if view.valid(n, ep)]
        if tail:
            await j.repair_tags(tail[-self.repair :])

    async def activate(self) -> list[tuple[int, bytes]]:
        """Claim (``begin_activation``), then read the history as a recovery does."""
        started = self.history.tick()
        await self.journal.begin_activation(self.pid, self.name)
        claim = getattr(self.journal, "_claims", {}).get((self.pid, self.name))
        self.epoch = claim.epoch if claim is not None else 0
        highest = await self.journal.highest_sequence_nr(self.pid)
        events = [e async for e in self.journal.replay(self.pid, 1, highest)]
        if self.tag and events and not self.tags_before_confirm:
            await self.journal.repair_tags(events[-self.repair :])
        log = [(e.sequence_nr, bytes(e.payload)) for e in events]
        self.history.recovered(self.name, started, log, self.epoch)
        self.next_seq = highest + 1
        return log

    async def append(self, n: int = 1) -> AppendOp:
        events = [
            _event(self.pid, s, self.name, self.tag)
            for s in range(self.next_seq, self.next_seq + n)
        ]
        op = self.history.append_started(self.name, [(e.sequence_nr, e.payload) for e in events])
        op.epoch = self.epoch
        self._op = op
        exc: BaseException | None = None
        try:
            await self.journal.append(events)
        except JournalError as err:
            exc = err
        self.history.append_done(op, exc)
        if exc is None:
            self.next_seq += n
        return op


async def final_log(journal: Journal, pid: str) -> list[tuple[int, bytes]]:
    return [(e.sequence_nr, bytes(e.payload)) async for e in journal.replay(pid)]


async def _finish(make_journal: Callable[[], Journal], pid: str, h: FenceHistory) -> FenceHistory:
    h.final(await final_log(make_journal(), pid))
    return h


async def _old_writer(make_journal: Callable[[], Journal], pid: str, h: FenceHistory) -> Writer:
    old = Writer(make_journal(), pid, "L", h)
    await old.activate()
    assert (await old.append(2)).outcome == "ack"  # #1..#2
    return old


async def _stale_writer_paused_at(
    step: str, make_journal: Callable[[], Journal], pid: str
) -> FenceHistory:
    """The stale writer's #3 pauses at ``step``; a new writer claims, recovers and
    acknowledges the next number; then the stale writer resumes."""
    h = FenceHistory()
    old = await _old_writer(make_journal, pid, h)
    gate = old.gates.hold(step)
    stale = asyncio.create_task(old.append(1))  # #3
    await gate.reached.wait()
    new = Writer(make_journal(), pid, "E", h)
    await new.activate()
    await new.append(1)
    gate.release()
    await stale
    return await _finish(make_journal, pid, h)


async def schedule_s1(make_journal: Callable[[], Journal], pid: str) -> FenceHistory:
    """S1: the stale writer pauses after its write (acked) and before its fence read; a new
    writer claims, recovers and acknowledges the next number; the stale writer resumes: its
    fence read fails -> outcome unknown. Its event is in the log iff the new writer saw it."""
    return await _stale_writer_paused_at("append.after_w1", make_journal, pid)


async def schedule_s2(make_journal: Callable[[], Journal], pid: str) -> FenceHistory:
    """S2: the stale writer pauses after its fence read passed, before the acknowledgement; a
    new writer claims and acknowledges; then the stale writer acknowledges: its event must be
    in the final log."""
    return await _stale_writer_paused_at("append.after_fence", make_journal, pid)


async def schedule_s3(make_journal: Callable[[], Journal], pid: str) -> FenceHistory:
    """S3: the stale writer's write of #3 is held before it is sent; a new writer claims,
    recovers to #2, writes and acknowledges its own #3; then the held write is sent — stamped
    later than the new writer's (the driver stamps at send time) — and its fence read fails."""
    h = FenceHistory()
    old = await _old_writer(make_journal, pid, h)
    gate = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))  # #3, held
    await gate.reached.wait()
    new = Writer(make_journal(), pid, "E", h)
    await new.activate()
    await new.append(1)  # its own #3
    gate.release()
    await stale
    return await _finish(make_journal, pid, h)


async def schedule_s5(make_journal: Callable[[], Journal], pid: str) -> FenceHistory:
    """S5: two activations claim concurrently, then both append #1 concurrently: exactly one
    acknowledges."""
    h = FenceHistory()
    a, b = Writer(make_journal(), pid, "A", h), Writer(make_journal(), pid, "B", h)
    started = await asyncio.gather(a.activate(), b.activate(), return_exceptions=True)
    live = [w for w, r in zip((a, b), started) if not isinstance(r, BaseException)]
    await asyncio.gather(*(w.append(1) for w in live))
    return await _finish(make_journal, pid, h)


async def schedule_s8(
    make_journal: Callable[[], Journal], pid: str, land_row: Callable[[Journal, StoredEvent], Any]
) -> FenceHistory:
    """S8: a gap in the old writer's pipeline: its flush #3 is held, its next flush #4 lands
    (``land_row`` writes that row as the old writer's epoch would). The new writer must start
    at #3 (the contiguous run ends at #2); #4 of the old epoch stays invalid for good."""
    h = FenceHistory()
    old = await _old_writer(make_journal, pid, h)
    gate = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))  # #3, held
    await gate.reached.wait()
    ev4 = _event(pid, 4, "L")
    op4 = h.append_started("L", [(4, ev4.payload)])
    op4.sent = True
    await land_row(old.journal, ev4)
    h.append_done(op4, TimeoutError("pipelined flush, never confirmed"))
    new = Writer(make_journal(), pid, "E", h)
    await new.activate()
    await new.append(2)
    gate.release()
    await stale
    return await _finish(make_journal, pid, h)
