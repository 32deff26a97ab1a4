"""Side effects a projection handler declares: run by the live version only, never twice.

A handler that overrides :meth:`~raysource.readside.projections.ProjectionHandler.side_effect`
(an email, a call out) gets it called after an event was applied to its view, but only while
its version is the one readers read (:mod:`raysource.readside.versions`, the alias; a
projection never switched is live as version 1). Before running, the worker **claims** the
event in ``projection_effects`` (a conditional insert keyed by the projection's base name,
persistence id and sequence number): whichever version, worker or redelivery gets there
first runs it, nobody runs it again. Claim-then-run is at most once: a process that dies
between the claim and the effect loses that effect (the claim row names the version).

**Held back**: a version that is not live (deployed beside the live one, backfilling) runs
none. On ``switch``, :func:`release` runs the held effects of the new live version: the events
after its deploy cut it applied (up to its watermarks) that nobody claimed (events up to the
cut were the previous live version's). Bulk backfill (``raysource.data``) never runs effects.
A worker reads the alias after applying a run of events: a "not live" answer is never
cached (so a version just switched to runs the effects of everything it applies after the
switch's release read its watermarks), a "live" one for ``LIVE_CACHE_S`` seconds (a version
switched away from may still claim for that long; the claims keep that to once).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from raysource.journal.api import Journal, TagOffset
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
    cut: TagOffset | None,
) -> int:
    """Run the held effects of ``spec``'s version, just made live: events of its tag after
    ``cut`` (None: none are held) up to its watermarks that nobody claimed. Returns how many
    ran."""
    if not declares_side_effects(handler) or cut is None:
        return 0
    await handler.prepare()
    marks = await handler.applied_marks() or {}
    effects = SideEffects(handler, spec.name, session, keyspace)
    ser = spec.serialization()
    async with contextlib.aclosing(journal.events_by_tag(spec.tag, cut)) as rows:
        async for te in rows:
            e = te.event
            if e.sequence_nr > marks.get(e.persistence_id, 0):
                continue  # not applied yet: the worker runs it when it applies it
            obj = ser.decode(
                e.serializer_id,
                e.manifest,
                bytes(e.payload),
                persistence_id=e.persistence_id,
                sequence_nr=e.sequence_nr,
            )
            env = EventEnvelope(obj, e.persistence_id, e.sequence_nr, e.timestamp, te.offset)
            await effects.run_once(env)
    return effects.ran
