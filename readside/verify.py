"""``raysource projection verify NAME``: prove a view complete against the journal.

:func:`verify_projection` reads, from the journal itself, every stored event of the
projection's tag (the aggregates the tag stream names, each replayed by persistence id in
full, keeping the events that carry the tag) and asks the handler to check its view against
them (:meth:`~raysource.readside.projections.ProjectionHandler.verify`). A view written through
:class:`~raysource.readside.views.EffectivelyOnceView` checks with :func:`verify_applied` that
every event is at or below its aggregate's watermark (and, with ``audit``, applied exactly
once); the example view also compares its rows with a fold of the events.

Run it on a quiet stream (or caught up): events appended while it runs may show as missing.
"""

from __future__ import annotations

import contextlib
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

    @property
    def ok(self) -> bool:
        return self.problems == []

    def lines(self) -> list[str]:
        head = (
            f"projection {self.projection} (tag {self.tag!r}): {self.events} events of "
            f"{self.aggregates} aggregates in the journal"
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
    pids: list[str] = []
    seen: set[str] = set()
    async with contextlib.aclosing(journal.events_by_tag(spec.tag)) as rows:
        async for te in rows:
            if te.event.persistence_id not in seen:
                seen.add(te.event.persistence_id)
                pids.append(te.event.persistence_id)
    ser = spec.serialization(key_ring_beside(journal))
    out = []
    for pid in pids:
        async for e in journal.replay(pid):
            if spec.tag in e.tags:
                obj = ser.decode(
                    e.serializer_id,
                    e.manifest,
                    bytes(e.payload),
                    persistence_id=pid,
                    sequence_nr=e.sequence_nr,
                )
                out.append(EventEnvelope(obj, pid, e.sequence_nr, e.timestamp, None, spec.tag))
    return out


async def verify_projection(
    spec: ProjectionSpec, journal: Journal, handler: ProjectionHandler
) -> VerifyReport:
    """Check ``handler``'s view against the journal (see the module docstring). The handler
    is prepared first (it may need its statements)."""
    await handler.prepare()
    events = await tag_events(journal, spec)
    problems = await handler.verify(events)
    return VerifyReport(
        spec.name, spec.tag, len(events), len({e.persistence_id for e in events}), problems
    )


async def verify_applied(writer: Any, events: list[EventEnvelope]) -> list[str]:
    """Problems of an :class:`~raysource.readside.views.EffectivelyOnceView` against
    ``events``: events above their aggregate's watermark ("not applied"), and with ``audit``
    events without exactly one audit row."""
    marks = await writer.stored_watermarks()
    problems = []
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
