"""``raysource projection verify NAME``: prove a view complete against the journal.

:func:`verify_projection` reads, from the journal itself, every stored event of the
projection's tag (the aggregates the tag stream names, each replayed by persistence id in
full, keeping the events that carry the tag) and asks the handler to check its view against
them (:meth:`~raysource.readside.projections.ProjectionHandler.verify`). A view written through
:class:`~raysource.readside.views.EffectivelyOnceView` checks with :func:`verify_applied` that
every event is at or below its aggregate's watermark (and, with ``audit``, applied exactly
once); the example view also compares its rows with a fold of the events.

Run it on a quiet stream (or caught up): events appended while it runs may show as missing.

After retention (:mod:`raysource.journal.retention`) removed a prefix of an aggregate's events,
the view is verified against the **retention mark**: the events at or below it are gone from the
journal, so they are neither listed nor expected. The handler receives ``marks`` (persistence id
-> mark, for the aggregates that have one) if its ``verify`` takes them, and checks what follows
each mark exactly; :func:`verify_applied` still reports a view whose watermark is below a mark
(a lagging view that has not read the purged events, which stay in the tag stream until every
projection read them). A handler whose ``verify`` does not take ``marks`` is called as before,
and the report says that the purged aggregates were not verified against their marks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raysource.journal.api import Journal
from raysource.journal.cassandra.keystore import key_ring_beside
from raysource.readside.projections import EventEnvelope, ProjectionHandler, ProjectionSpec

__all__ = [
    "VerifyReport",
    "latest_offset",
    "latest_offset_cassandra",
    "tag_events",
    "tag_events_and_marks",
    "takes_marks",
    "verify_applied",
    "verify_cassandra",
    "verify_projection",
]


@dataclass
class VerifyReport:
    """What :func:`verify_projection` found. ``problems`` is None when the handler cannot
    verify; ``ok`` means it could and found nothing missing."""

    projection: str
    tag: str
    events: int
    aggregates: int
    problems: list[str] | None = field(default_factory=list)
    #: persistence id -> retention mark, for the aggregates whose prefix retention removed
    marks: dict[str, int] = field(default_factory=dict)
    #: whether the handler checked against ``marks`` (its ``verify`` takes them)
    used_marks: bool = True

    @property
    def ok(self) -> bool:
        return self.problems == []

    def lines(self) -> list[str]:
        head = (
            f"projection {self.projection} (tag {self.tag!r}): {self.events} events of "
            f"{self.aggregates} aggregates in the journal"
        )
        if self.marks:
            head += (
                f"; {len(self.marks)} aggregate(s) verified from their retention mark"
                if self.used_marks
                else f"; {len(self.marks)} aggregate(s) purged below a retention mark, NOT "
                "verified against it (the handler's verify() takes no marks)"
            )
        if self.problems is None:
            return [head, "NOT VERIFIED: the handler has no verify()"]
        if not self.problems:
            return [head, "COMPLETE: every stored event of the tag is applied exactly once"]
        return [head, f"INCOMPLETE: {len(self.problems)} problem(s)"] + [
            f"  {p}" for p in self.problems
        ]


async def tag_events(journal: Journal, spec: ProjectionSpec) -> list[EventEnvelope]:
    """Every stored event of ``spec.tag``, per aggregate in sequence order (decoded)."""
    return (await tag_events_and_marks(journal, spec))[0]


async def tag_events_and_marks(
    journal: Journal, spec: ProjectionSpec
) -> tuple[list[EventEnvelope], dict[str, int]]:
    """:func:`tag_events` and the retention mark of every aggregate that has one (the events
    at or below it are gone: replay starts right after it)."""
    pids: list[str] = []
    seen: set[str] = set()
    async with contextlib.aclosing(journal.events_by_tag(spec.tag)) as rows:
        async for te in rows:
            if te.event.persistence_id not in seen:
                seen.add(te.event.persistence_id)
                pids.append(te.event.persistence_id)
    ser = spec.serialization(key_ring_beside(journal))
    out = []
    marks: dict[str, int] = {}
    for pid in pids:
        first: int | None = None
        async for e in journal.replay(pid):
            first = e.sequence_nr if first is None else first
            if spec.tag in e.tags:
                obj = ser.decode(
                    e.serializer_id,
                    e.manifest,
                    bytes(e.payload),
                    persistence_id=pid,
                    sequence_nr=e.sequence_nr,
                )
                out.append(EventEnvelope(obj, pid, e.sequence_nr, e.timestamp, None, spec.tag))
        mark = first - 1 if first is not None else await journal.highest_sequence_nr(pid)
        if mark > 0:
            marks[pid] = mark
    return out, marks


def takes_marks(handler: ProjectionHandler) -> bool:
    """Whether ``handler.verify`` takes the retention ``marks``."""
    return "marks" in inspect.signature(handler.verify).parameters


async def verify_projection(
    spec: ProjectionSpec, journal: Journal, handler: ProjectionHandler
) -> VerifyReport:
    """Check ``handler``'s view against the journal (see the module docstring). The handler
    is prepared first (it may need its statements)."""
    await handler.prepare()
    events, marks = await tag_events_and_marks(journal, spec)
    used = takes_marks(handler)
    problems = await (handler.verify(events, marks=marks) if used else handler.verify(events))
    return VerifyReport(
        spec.name,
        spec.tag,
        len(events),
        len({e.persistence_id for e in events} | set(marks)),
        problems,
        marks,
        used,
    )


async def verify_applied(
    writer: Any, events: list[EventEnvelope], retention: Mapping[str, int] | None = None
) -> list[str]:
    """Problems of an :class:`~raysource.readside.views.EffectivelyOnceView` against
    ``events``: events above their aggregate's watermark ("not applied"), and with ``audit``
    events without exactly one audit row. ``retention``: the retention marks
    (:func:`tag_events_and_marks`): a watermark below one means the view has not applied the
    purged events between them (reported; they wait in the tag stream)."""
    marks = await writer.stored_watermarks()
    problems = []
    for pid, mark in sorted((retention or {}).items()):
        if marks.get(pid, 0) < mark:
            problems.append(
                f"not applied: {pid} #{marks.get(pid, 0) + 1}-{mark} (below the retention "
                f"mark {mark}: gone from the log, still in the tag stream until read)"
            )
    missing: dict[str, list[int]] = {}
    for e in events:
        if e.sequence_nr > marks.get(e.persistence_id, 0):
            missing.setdefault(e.persistence_id, []).append(e.sequence_nr)
    for pid, seqs in sorted(missing.items()):
        problems.append(f"not applied: {pid} #{_ranges(seqs)} (watermark {marks.get(pid, 0)})")
    if writer.audit:
        counts = await writer.applied_counts()
        for e in events:
            n = counts.get((e.persistence_id, e.sequence_nr), 0)
            if n > 1:
                problems.append(f"applied {n} times: {e.persistence_id} #{e.sequence_nr}")
            elif n == 0 and e.sequence_nr <= marks.get(e.persistence_id, 0):
                problems.append(f"no audit row: {e.persistence_id} #{e.sequence_nr}")
    return problems


def _ranges(seqs: list[int]) -> str:
    out, start, prev = [], seqs[0], seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(out)


async def verify_cassandra(spec: ProjectionSpec, config: Any) -> VerifyReport:
    """:func:`verify_projection` against the Cassandra journal and view of ``config`` (what
    ``raysource projection verify NAME`` runs)."""
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.journal.cassandra.session import CassandraSession

    async with CassandraSession(config) as session:
        journal = CassandraJournal(session, config)
        return await verify_projection(spec, journal, spec.handler_factory(session, config))


async def latest_offset(journal: Journal, tag: str) -> Any:
    """The offset of the newest visible event of ``tag`` (None if it has none): where
    ``set-offset --to end`` moves a projection (a full read of the tag)."""
    last = None
    async with contextlib.aclosing(journal.events_by_tag(tag)) as rows:
        async for te in rows:
            last = te.offset
    return last


async def latest_offset_cassandra(config: Any, tag: str) -> Any:
    """:func:`latest_offset` in the Cassandra journal of ``config`` (what ``raysource projection
    set-offset NAME --to end`` moves the projection to)."""
    from raysource.journal.cassandra.journal import CassandraJournal

    journal = await CassandraJournal.connect(config)
    try:
        return await latest_offset(journal, tag)
    finally:
        await journal.close()
