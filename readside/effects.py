"""Side effects a projection handler declares: run by the live version only, never twice.

A handler that overrides :meth:`~raysource.readside.projections.ProjectionHandler.side_effect`
(an email, a call out) gets it called after an event was applied to its view, but only while
its version is the one readers read (:mod:`raysource.readside.versions`, the alias; a
projection never switched is live as version 1). Before running, the worker **claims** the
event in ``projection_effects`` (a conditional insert keyed by the projection's base name,
persistence id and sequence number): whichever version, worker or redelivery gets there
first runs it, nobody runs it again. Claim-then-run is at most once: a process that dies
between the claim and the effect loses that effect (the claim row names the version).

**Held back**: a version that is not live (deployed beside the live one, backfilling,
standing by after a switch) runs none; bulk backfill (``raysource.data``) never runs effects.
The alias moves (switch, rollback) in a **handover** (:mod:`raysource.readside.versions`):
the old live version paused, the new one paused once it applied everything the old one did;
the old version *handled* the events up to its watermarks (their effects are its own, what
the new one held for them is discarded), and :func:`release` runs the new version's held
effects of the events it applied beyond the old version's watermarks. A worker reads the
alias after applying a run of events: a "not live" answer is never cached, a "live" one for
``LIVE_CACHE_S`` seconds and never across a pause (a resumed worker reads the alias again),
so both sides of a handover see the move as soon as they resume.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from raysource.journal.api import Journal, StoredEvent, TagOffset
from raysource.journal.cassandra.readside_statements import EffectStatements
from raysource.readside.projections import EventEnvelope, ProjectionHandler, ProjectionSpec
from raysource.readside.versions import live_version, split_version

__all__ = ["LIVE_CACHE_S", "SideEffects", "declares_side_effects", "release"]

LIVE_CACHE_S = 1.0


def declares_side_effects(handler: ProjectionHandler) -> bool:
    return type(handler).side_effect is not ProjectionHandler.side_effect


class SideEffects:
    """One worker's side effects (see the module docstring). Without a Cassandra session
    (the in-memory journal: no versions, no claims) every applied event's effect runs."""

    def __init__(self, handler: ProjectionHandler, name: str, session: Any, keyspace: str) -> None:
        self.handler = handler
        self.enabled = declares_side_effects(handler)
        self.base, self.version = split_version(name)
        self.session, self.keyspace = session, keyspace
        self.cql = EffectStatements(keyspace) if session is not None else None
        self._live, self._checked = False, -LIVE_CACHE_S
        self.ran = self.held = self.claimed_elsewhere = 0

    def recheck(self) -> None:
        """Read the alias again before the next effect (a worker resumed after a pause)."""
        self._live, self._checked = False, -LIVE_CACHE_S

    async def live(self) -> bool:
        if self.session is None:
            return True
        # "live" is trusted for LIVE_CACHE_S (a stale yes only claims: once); "not live" is
        # re-read every time, after the events were applied: a version just switched to
        # either sees it, or applied them before the switch's release read its watermarks
        if not self._live or time.monotonic() - self._checked >= LIVE_CACHE_S:
            v = await live_version(self.session, self.keyspace, self.base)
            self._live, self._checked = v == self.version, time.monotonic()
        return self._live

    async def after_applied(self, envelopes: list[EventEnvelope]) -> None:
        """Run the effects of ``envelopes`` (just applied) if this version is live."""
        if not self.enabled or not envelopes:
            return
        if not await self.live():
            self.held += len(envelopes)
            return
        for env in envelopes:
            await self.run_once(env)

    async def run_once(self, env: EventEnvelope) -> bool:
        """Claim ``env``'s effect and run it; False if it was claimed already."""
        if self.cql is not None:
            rows = await self.session.execute(
                self.cql.claim, (self.base, env.persistence_id, env.sequence_nr, self.version)
            )
            if not (rows and rows[0][0]):
                self.claimed_elsewhere += 1
                return False
        await self.handler.side_effect(env)
        self.ran += 1
        return True


async def release(
    spec: ProjectionSpec,
    journal: Journal,
    handler: ProjectionHandler,
    session: Any,
    keyspace: str,
    handled: dict[str, int] | None,
    applied: dict[str, int] | None,
    cut: TagOffset | None,
) -> int:
    """Run the held effects of ``spec``'s version, just made live (paused): the events of
    its tag it ``applied`` (its watermarks) beyond what the previous live version ``handled``
    (that version's watermarks, with it paused), each claimed first. Returns how many ran.

    A handler without watermarks (``applied_marks`` None, on either side): the events after
    ``cut`` (the version's deploy cut; None: none) nobody claimed."""
    if not declares_side_effects(handler):
        return 0
    effects = SideEffects(handler, spec.name, session, keyspace)
    ser = spec.serialization()

    async def run(e: StoredEvent, offset: TagOffset | None) -> None:
        obj = ser.decode(
            e.serializer_id,
            e.manifest,
            bytes(e.payload),
            persistence_id=e.persistence_id,
            sequence_nr=e.sequence_nr,
        )
        await effects.run_once(
            EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp, offset, spec.tag)
        )

    if handled is not None and applied is not None:
        for pid, upto in sorted(applied.items()):
            if upto > handled.get(pid, 0):
                async for e in journal.replay(pid, handled.get(pid, 0) + 1, upto):
                    if spec.tag in e.tags:
                        await run(e, None)
        return effects.ran
    if cut is None:
        return 0
    marks = applied or {}
    async with contextlib.aclosing(journal.events_by_tag(spec.tag, cut)) as rows:
        async for te in rows:
            if te.event.sequence_nr <= marks.get(te.event.persistence_id, 0):
                await run(te.event, te.offset)
    return effects.ran
