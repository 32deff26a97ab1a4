"""Versioned projections: a new version built beside the live one, switched atomically.

A projection ``NAME`` has versions 1, 2, ...; version ``v`` runs as the projection
``version_name(NAME, v)`` (``NAME`` itself for 1, ``NAME.v2`` ...: its own offsets and workers)
and its handler writes its own view tables (the spec builder, ``build(v) -> ProjectionSpec``,
gives each version its tables). Readers read through the **alias**: the static ``live`` column
of ``projection_versions`` (one row read per query, :func:`live_version`; 1 until a switch).

* ``deploy`` (:func:`raysource.data.backfill.deploy`): the new version's tables, a bulk
  backfill with Ray Data up to a cut, then its workers follow the tag from exactly that cut.
* ``switch`` (:meth:`VersionControl.switch`) makes a version live, refused
  (:class:`~raysource.readside.errors.SwitchRefusedError`, nothing changed) while

  1. it is **behind**: the lowest offset of its workers is below the highest offset of the
     live version's workers (retried for ``wait`` seconds), or
  2. it does not **verify**: with its workers paused, every event of the tag up to their
     offset must be applied (its watermark reaches it), and the view must match the handler's
     fold of the events up to each aggregate's watermark, each applied once
     (:func:`verify_at_marks`; exact while commands keep arriving, since the paused view is
     compared with what its own watermarks say it applied).

  The alias moves with one conditional update (``IF live = <the version checked>``), so every
  reader reads either the old or the new version, never a mix, and two racing switches cannot
  both win.
* ``rollback`` moves the alias back to the previous version (no verify: it kept following).

**Handover** (switch and rollback; :mod:`raysource.readside.effects`): the alias moves from the
live version ``O`` to ``N`` with ``O`` paused (its effects done) and ``N`` paused once it has
applied everything ``O`` applied (by their views' watermarks, ``applied_marks``; waited for,
else refused, alias unchanged). ``O`` *handled* the events up to its watermarks: their effects
are ``O``'s (run, or none if ``O`` declares none), and ``N`` discards what it held for them. The
events ``N`` applied beyond ``O``'s watermarks, which ``O`` never applied, are ``N``'s: it runs
their held effects before both resume. So after a rollback what the rolled-back version held
is discarded, and what the restored version held while standing by (events the other never
applied) runs. The live version is paused only for the catch-up wait, the alias move and that
release (its view stops advancing meanwhile; readers keep reading it).
* ``drop`` stops a version that is not live, drops its tables (``handler.drop``) and forgets
  its offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raysource.journal.api import Journal, TagOffset
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.readside_statements import VersionStatements
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import ConfigError
from raysource.readside.errors import ProjectionError, SwitchRefusedError
from raysource.readside.offsets import now_us
from raysource.readside.projections import (
    EventEnvelope,
    ProjectionHandler,
    ProjectionSpec,
    offset_from_str,
    offset_to_str,
)
from raysource.readside.verify import VerifyReport, verify_projection

__all__ = [
    "Alias",
    "SpecBuilder",
    "VersionControl",
    "VersionRegistry",
    "VersionRow",
    "live_version",
    "split_version",
    "verify_at_marks",
    "version_name",
]

SpecBuilder = Callable[[int], ProjectionSpec]


def version_name(base: str, version: int) -> str:
    """The stored name of version ``version`` of projection ``base``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"a projection version is an int >= 1, got {version!r}")
    return base if version == 1 else f"{base}.v{version}"


def split_version(name: str) -> tuple[str, int]:
    """``(base, version)`` of a stored projection name (``NAME.v2`` -> ``(NAME, 2)``; any
    other name is version 1 of itself)."""
    base, dot, tail = name.rpartition(".v")
    if dot and base and tail.isdigit() and int(tail) >= 2:
        return base, int(tail)
    return name, 1


def build_version(build: SpecBuilder, base: str, version: int) -> ProjectionSpec:
    """``build(version)``, checked to name ``version_name(base, version)``."""
    spec = build(version)
    if not isinstance(spec, ProjectionSpec) or spec.name != version_name(base, version):
        raise ConfigError(
            f"the spec builder gave {getattr(spec, 'name', spec)!r} for version {version} "
            f"of {base!r}; want a ProjectionSpec named {version_name(base, version)!r}"
        )
    return spec


@dataclass(frozen=True)
class Alias:
    """What readers read: ``live``; where a rollback goes: ``previous`` (None: nowhere)."""

    live: int = 1
    previous: int | None = None


@dataclass(frozen=True)
class VersionRow:
    version: int
    state: str
    cut: TagOffset | None
    updated_us: int


class VersionRegistry:
    """The ``projection_versions`` table of one keyspace (the alias and the versions)."""

    def __init__(self, session: CassandraSession, keyspace: str) -> None:
        self.session = session
        self.cql = VersionStatements(keyspace)

    async def create(self) -> None:
        for stmt in self.cql.create:
            await self.session.execute(stmt, prepare=False, timeout=60.0)

    async def alias(self, base: str) -> Alias:
        row = await self.session.select_one(self.cql.live, (base,), profile=RAW_PROFILE)
        if row is None or row[0] is None:
            return Alias()
        return Alias(row[0], row[1])

    async def versions(self, base: str) -> list[VersionRow]:
        rows = await self.session.select_all(self.cql.select, (base,), profile=RAW_PROFILE)
        return [
            VersionRow(r[0], r[1] or "", offset_from_str(r[2]) if r[2] else None, r[3] or 0)
            for r in rows
            if r[0] is not None
        ]

    async def record(self, base: str, version: int, state: str, cut: TagOffset | None) -> None:
        await self.session.execute(
            self.cql.upsert, (state, offset_to_str(cut), now_us(), base, version)
        )

    async def set_state(self, base: str, version: int, state: str) -> None:
        await self.session.execute(self.cql.set_state, (state, now_us(), base, version))

    async def move(self, base: str, to: int, expected: Alias) -> bool:
        """Point the alias at ``to`` (previous: ``expected.live``) if it still is
        ``expected.live``; False if another switch moved it first."""
        if expected == Alias():  # never switched: create the alias at 1 first
            await self.session.execute(self.cql.init_alias, (1, base))
        rows = await self.session.execute(self.cql.switch, (to, expected.live, base, expected.live))
        return bool(rows and rows[0][0])

    async def forget(self, name: str) -> None:
        """Delete the stored offsets and parked streams of projection ``name``."""
        await self.session.execute(self.cql.delete_offsets, (name,))
        await self.session.execute(self.cql.delete_parked, (name,))


async def live_version(session: CassandraSession, keyspace: str, base: str) -> int:
    """The version readers of projection ``base`` read now (the alias; 1 if never switched)."""
    return (await VersionRegistry(session, keyspace).alias(base)).live


async def verify_at_marks(
    spec: ProjectionSpec, journal: Journal, handler: ProjectionHandler, upto: TagOffset | None
) -> VerifyReport:
    """Verify a paused version exactly (module docstring, switch check 2): every event of the
    tag at or before ``upto`` (its workers' lowest offset) is applied, and the view matches
    the events up to each aggregate's watermark. A handler without ``applied_marks`` gets the
    plain :func:`~raysource.readside.verify.verify_projection` (needs a quiet stream)."""
    await handler.prepare()
    marks = await handler.applied_marks()
    if marks is None:
        return await verify_projection(spec, journal, handler)
    needed: dict[str, int] = {}
    if upto is not None:
        async with contextlib.aclosing(journal.events_by_tag(spec.tag)) as rows:
            async for te in rows:
                if te.offset > upto:
                    break
                pid = te.event.persistence_id
                needed[pid] = max(needed.get(pid, 0), te.event.sequence_nr)
    problems = [
        f"missed: {pid} #{marks.get(pid, 0) + 1}..#{seq} (applied up to #{marks.get(pid, 0)})"
        for pid, seq in sorted(needed.items())
        if marks.get(pid, 0) < seq
    ]
    ser = spec.serialization()
    events: list[EventEnvelope] = []
    for pid in sorted(marks):
        async for e in journal.replay(pid, 1, marks[pid]):
            if spec.tag in e.tags:
                obj = ser.decode(
                    e.serializer_id,
                    e.manifest,
                    bytes(e.payload),
                    persistence_id=pid,
                    sequence_nr=e.sequence_nr,
                )
                events.append(EventEnvelope(obj, pid, e.sequence_nr, e.timestamp, None, spec.tag))
    found = await handler.verify(events)
    problems += found or []
    return VerifyReport(
        spec.name,
        spec.tag,
        len(events),
        len(marks),
        None if found is None and not problems else problems,
    )


HANDOVER_GRACE_S = 5.0  # a following version gets this long to apply what is in flight


def _grace() -> float:
    return time.monotonic() + HANDOVER_GRACE_S


def _offset(status: dict[str, Any]) -> TagOffset:
    return offset_from_str(str(status.get("offset") or "start")) or TagOffset.start()


class VersionControl:
    """Switch, roll back and drop versions of projections on the connected Ray cluster (their
    workers are :class:`~raysource.readside.projection_actor.Projections`')."""

    def __init__(self, config: CassandraConfig, *, detached: bool = False) -> None:
        from raysource.readside.projection_actor import Projections

        self.config = config
        self.control = Projections(config, detached=detached)

    async def _registry(self, session: CassandraSession) -> VersionRegistry:
        registry = VersionRegistry(session, self.config.keyspace)
        await registry.create()
        return registry

    async def alias(self, base: str) -> Alias:
        async with CassandraSession(self.config) as session:
            return await (await self._registry(session)).alias(base)

    async def versions(self, base: str) -> tuple[Alias, list[VersionRow]]:
        async with CassandraSession(self.config) as session:
            registry = await self._registry(session)
            return await registry.alias(base), await registry.versions(base)

    async def _behind(
        self, new: ProjectionSpec, old: ProjectionSpec
    ) -> tuple[TagOffset, TagOffset] | None:
        """(new's lowest, old's highest offset) if ``new`` is behind ``old``, else None."""
        new_st = await self.control.status(new.name)
        if not new_st:
            raise SwitchRefusedError(
                f"projection {new.name!r} is not deployed (no workers, no stored offsets)"
            )
        old_st = await self.control.status(old.name)
        low = min(_offset(s) for s in new_st)
        high = max((_offset(s) for s in old_st), default=TagOffset.start())
        return (low, high) if low < high else None

    async def switch(
        self, base: str, version: int, build: SpecBuilder, *, wait: float = 0.0
    ) -> str:
        """Make ``version`` live (see the module docstring); a one-line report."""
        new = build_version(build, base, version)
        alias = await self.alias(base)
        if alias.live == version:
            return f"{base}: version {version} is already live"
        old = build_version(build, base, alias.live)
        deadline = time.monotonic() + wait
        while (behind := await self._behind(new, old)) is not None:
            if time.monotonic() >= deadline:
                low, high = behind
                raise SwitchRefusedError(
                    f"projection {base!r}: version {version} is behind version {alias.live} "
                    f"(at offset {offset_to_str(low)}, version {alias.live} at "
                    f"{offset_to_str(high)}); not switched: wait until it caught up "
                    f"(`raysource projection status {new.name}`) or pass --wait SECONDS"
                )
            await asyncio.sleep(0.2)
        report = await self._verify_paused(new)
        if not report.ok:
            problems = report.problems or ["the handler cannot verify its view"]
            raise SwitchRefusedError(
                f"projection {base!r}: version {version} does not verify "
                f"({len(problems)} problem(s), first: {problems[0]}); not switched"
            )
        released = await self._handover(base, alias, old, new, max(deadline, _grace()))
        held = f"; {released} held side effect(s) run" if released else ""
        return (
            f"{base}: version {version} is live{held} (was {alias.live}; verified {report.events} "
            f"events of {report.aggregates} aggregates, 0 missed, 0 applied twice)"
        )

    async def _running(self, name: str) -> bool:
        """Whether projection ``name`` has workers running here (not paused or stopped)."""
        if not self.control.handles(name):
            return False
        states = [str(s.get("state")) for s in await self.control.status(name)]
        return any(s in ("running", "parked") for s in states)

    async def _handover(
        self, base: str, alias: Alias, old: ProjectionSpec, new: ProjectionSpec, deadline: float
    ) -> int:
        """Move the alias from ``old`` (live) to ``new`` and hand the side effects over
        (module docstring, "Handover"); returns how many held effects ``new`` ran.
        ``SwitchRefusedError`` (alias unchanged) if ``new`` has not applied everything ``old``
        has by ``deadline``. Both versions are left running or paused as they were."""
        from raysource.journal.cassandra.journal import CassandraJournal
        from raysource.readside.effects import release

        _, version = split_version(new.name)
        old_running = await self._running(old.name)
        new_running = False
        if old_running:
            await self.control.pause(old.name)
        try:
            async with CassandraSession(self.config) as session:
                old_handler = old.handler_factory(session, self.config)
                new_handler = new.handler_factory(session, self.config)
                await old_handler.prepare()
                await new_handler.prepare()
                old_marks = await old_handler.applied_marks()
                while old_marks is not None:
                    marks = await new_handler.applied_marks() or {}
                    late = [(p, marks.get(p, 0), s) for p, s in old_marks.items()]
                    late = sorted(x for x in late if x[1] < x[2])
                    if not late:
                        break
                    if time.monotonic() >= deadline:
                        pid, at, want = late[0]
                        raise SwitchRefusedError(
                            f"projection {base!r}: version {version} is behind version "
                            f"{alias.live} on {len(late)} aggregate(s) (first: {pid} at "
                            f"#{at}, version {alias.live} at #{want}); not switched: wait "
                            f"until it caught up or pass --wait SECONDS"
                        )
                    await asyncio.sleep(0.2)
                new_running = await self._running(new.name)
                if new_running:  # quiet: what it applied so far is what it held
                    await self.control.pause(new.name)
                new_marks = await new_handler.applied_marks()
                registry = await self._registry(session)
                if not await registry.move(base, version, alias):
                    raise SwitchRefusedError(
                        f"projection {base!r}: the live version changed while switching "
                        f"(another switch won); not switched"
                    )
                await registry.set_state(base, version, "live")
                await registry.set_state(base, alias.live, "standby")
                cut = next(
                    (r.cut for r in await registry.versions(base) if r.version == version), None
                )
                journal = CassandraJournal(session, self.config)
                return await release(
                    new,
                    journal,
                    new_handler,
                    session,
                    self.config.keyspace,
                    old_marks,
                    new_marks,
                    cut,
                )
        finally:
            if new_running:
                await self.control.resume(new.name)
            if old_running:
                await self.control.resume(old.name)

    async def _verify_paused(self, spec: ProjectionSpec) -> VerifyReport:
        """Pause ``spec``'s workers, :func:`verify_at_marks`, resume them."""
        from raysource.journal.cassandra.journal import CassandraJournal

        running = await self._running(spec.name)  # one paused by an operator stays paused
        if running:
            await self.control.pause(spec.name)
        try:
            upto = min(_offset(s) for s in await self.control.status(spec.name))
            async with CassandraSession(self.config) as session:
                journal = CassandraJournal(session, self.config)
                handler = spec.handler_factory(session, self.config)
                return await verify_at_marks(spec, journal, handler, upto)
        finally:
            if running:
                await self.control.resume(spec.name)

    async def rollback(self, base: str, build: SpecBuilder, *, wait: float = 0.0) -> str:
        """Point the alias back at the previous version (no verify: it kept following; it
        must have applied everything the live version has, waited for up to ``wait`` s), and
        hand the side effects back (module docstring, "Handover")."""
        async with CassandraSession(self.config) as session:
            registry = await self._registry(session)
            alias = await registry.alias(base)
            states = {r.version: r.state for r in await registry.versions(base)}
        if alias.previous is None:
            raise ProjectionError(f"projection {base!r}: no previous version to roll back to")
        if states.get(alias.previous) == "dropped":
            raise ProjectionError(
                f"projection {base!r}: version {alias.previous} was dropped; cannot roll back to it"
            )
        old = build_version(build, base, alias.live)
        new = build_version(build, base, alias.previous)
        released = await self._handover(
            base, alias, old, new, max(time.monotonic() + wait, _grace())
        )
        held = f"; {released} held side effect(s) run" if released else ""
        return f"{base}: rolled back to version {alias.previous} (was {alias.live}){held}"

    async def drop(self, base: str, version: int, build: SpecBuilder) -> str:
        """Stop version ``version`` (not the live one), drop its tables, forget its offsets."""
        spec = build_version(build, base, version)
        alias = await self.alias(base)
        if alias.live == version:
            raise ProjectionError(
                f"projection {base!r}: version {version} is live; switch to another first"
            )
        if self.control.handles(spec.name):
            await self.control.stop(spec.name)
        async with CassandraSession(self.config) as session:
            registry = await self._registry(session)
            await spec.handler_factory(session, self.config).drop()
            await registry.forget(spec.name)
            await registry.record(base, version, "dropped", None)
        return f"{base}: version {version} dropped (workers stopped, tables dropped)"
