"""The example read-side view: reservations by customer, across every show.

A projection over the tag ``"show"`` (all events of :data:`raysource.examples.seats.SHOW`) keeps
``reservations_by_customer (customer, show, seat)``: ``SeatReserved`` inserts a row,
``ReservationCancelled`` deletes it. The row keeps the customer's ``name`` (personal): when
the customer is forgotten (``raysource forget``) the view scrubs it to ``"<forgotten>"``, and
events read after the forget carry that placeholder already. Writes go through
:class:`~raysource.readside.views.EffectivelyOnceView`, so redelivered events change nothing.

    from raysource.readside.projection_actor import Projections
    from raysource.examples.reservations_view import reservations_projection, reservations_of

    control = Projections(config)                      # a CassandraConfig
    await control.start(reservations_projection())     # Ray actor(s) follow the tag
    await reservations_of(session, config.keyspace, "alice")  # [("42", "A1"), ...]

CLI: ``raysource view reservations alice --cassandra 127.0.0.1:9042 --keyspace raysource``.

Versions (:mod:`raysource.readside.versions`): ``reservations_projection(version=2)`` is the
projection ``reservations-by-customer.v2`` writing ``reservations_by_customer_v2`` (and its own
watermarks); :func:`reservations_of` reads the version the projection's alias names, so the
service and the ``view`` CLI follow ``raysource projection switch`` at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from raysource.examples.seats import SHOW, ReservationCancelled, SeatReserved
from raysource.journal.api import TagOffset
from raysource.journal.cassandra.config import CassandraConfig, validate_identifier
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.personal import FORGOTTEN, SubjectForgotten
from raysource.readside.projections import (
    EventEnvelope,
    ProjectionHandler,
    ProjectionSettings,
    ProjectionSpec,
)
from raysource.readside.verify import verify_applied
from raysource.readside.versions import live_version, version_name
from raysource.readside.views import EffectivelyOnceView
from raysource.runtime.aggregate import split_persistence_id

__all__ = [
    "RESERVATIONS",
    "ReservationsByCustomer",
    "names_of",
    "VIEW_TABLE",
    "reservations_of",
    "reservations_projection",
    "reservations_version",
    "view_table",
]

VIEW_TABLE = "reservations_by_customer"
NAME = "reservations-by-customer"


def view_table(version: int = 1) -> str:
    """The view table of ``version`` (version 1 keeps the original name)."""
    return VIEW_TABLE if version == 1 else f"{VIEW_TABLE}_v{version}"


class ReservationsByCustomer(ProjectionHandler):
    """The handler of the reservations-by-customer projection."""

    def __init__(
        self, session: CassandraSession, keyspace: str, *, audit: bool = False, version: int = 1
    ) -> None:
        self.session = session
        self.table = f"{validate_identifier(keyspace, 'keyspace')}.{view_table(version)}"
        # a view row (customer, show, seat) is written only by events of its show and seat
        self.writer = EffectivelyOnceView(
            session, keyspace, view_table(version), audit=audit, conflict_key=_show_and_seat
        )

    async def global_prepare(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (customer text, show text, seat text, "
            "name text, PRIMARY KEY ((customer), show, seat))",
            prepare=False,
            timeout=60.0,
        )
        ks, _, table = self.table.partition(".")
        columns = await self.session.select_all(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? "
            "AND table_name = ?",
            (ks, table),
            profile=RAW_PROFILE,
        )
        if "name" not in {r[0] for r in columns}:  # a view made before names were kept
            await self.session.execute(
                f"ALTER TABLE {self.table} ADD name text", prepare=False, timeout=60.0
            )
        await self.writer.create_tables()

    async def prepare(self) -> None:
        self.insert = await self.session.prepare(
            f"INSERT INTO {self.table} (customer, show, seat, name) VALUES (?, ?, ?, ?)"
        )
        self.rows_of = await self.session.prepare(
            f"SELECT show, seat FROM {self.table} WHERE customer = ?"
        )
        self.scrub = await self.session.prepare(
            f"UPDATE {self.table} SET name = ? WHERE customer = ? AND show = ? AND seat = ? "
            "IF EXISTS"
        )
        self.delete = await self.session.prepare(
            f"DELETE FROM {self.table} WHERE customer = ? AND show = ? AND seat = ?"
        )
        self.writer.forget_cache()

    def _mutations(self, envelope: EventEnvelope) -> list:
        _, show = split_persistence_id(envelope.persistence_id)
        match envelope.event:
            case SeatReserved(seat=seat, customer=customer, name=name):
                return [(self.insert, (customer, show, seat, name))]
            case ReservationCancelled(seat=seat, customer=customer):
                return [(self.delete, (customer, show, seat))]
            case _:
                return []  # other events still advance the watermark

    async def handle_batch(self, envelopes: list[EventEnvelope]) -> None:
        await self.writer.apply_batch([(env, self._mutations(env)) for env in envelopes])

    async def on_subject_forgotten(self, signal: SubjectForgotten) -> None:
        """Scrub the forgotten customer's name from their rows (idempotent)."""
        rows = await self.session.select_all(self.rows_of, (signal.subject,), profile=RAW_PROFILE)
        for show, seat in rows:  # IF EXISTS: a row cancelled meanwhile is not brought back
            await self.session.execute(self.scrub, (FORGOTTEN, signal.subject, show, seat))

    async def applied_marks(self) -> dict[str, int]:
        return await self.writer.stored_watermarks()

    async def drop(self) -> None:
        for table in (self.table, self.writer.watermarks_table, self.writer.applied_table):
            await self.session.execute(f"DROP TABLE IF EXISTS {table}", prepare=False, timeout=60.0)

    async def verify(
        self, events: list[EventEnvelope], marks: Mapping[str, int] | None = None
    ) -> list[str]:
        """The view against a fold of ``events``: missing and unexpected rows, and events
        the watermarks (and audit rows, if kept) do not show applied exactly once. A show whose
        events retention purged up to a mark (``marks``) is checked from it: a seat that an
        event after the mark reserved or released is checked exactly; the rows of the other
        seats of that show came from purged events and are left alone."""
        expected: set[tuple[str, str, str]] = set()
        decided: set[tuple[str, str]] = set()  # (show, seat) some listed event settled
        for env in events:
            _, show = split_persistence_id(env.persistence_id)
            match env.event:
                case SeatReserved(seat=seat, customer=customer):
                    expected.add((customer, show, seat))
                    decided.add((show, seat))
                case ReservationCancelled(seat=seat, customer=customer):
                    expected.discard((customer, show, seat))
                    decided.add((show, seat))
        purged = {split_persistence_id(pid)[1] for pid in marks or {}}
        rows = await self.session.select_all(
            f"SELECT customer, show, seat FROM {self.table}", profile=RAW_PROFILE
        )
        actual = {tuple(r) for r in rows}
        problems = [f"missing row {r}" for r in sorted(expected - actual)]
        problems += [
            f"unexpected row {r}"
            for r in sorted(actual - expected)
            if r[1] not in purged or (r[1], r[2]) in decided
        ]
        return problems + await verify_applied(self.writer, events, marks)

    async def on_reset(self, offset: TagOffset | None) -> None:
        if offset is None:  # replay from the start rebuilds the view
            await self.session.execute(f"TRUNCATE {self.table}", prepare=False, timeout=60.0)
            await self.writer.clear()


def _show_and_seat(envelope: EventEnvelope) -> tuple[str, str]:
    return (envelope.persistence_id, getattr(envelope.event, "seat", ""))


@dataclass(frozen=True)
class _Factory:
    audit: bool = False
    version: int = 1

    def __call__(self, session: CassandraSession, config: CassandraConfig) -> ProjectionHandler:
        return ReservationsByCustomer(
            session, config.keyspace, audit=self.audit, version=self.version
        )


def reservations_projection(
    name: str = NAME,
    *,
    n_slices: int = 1,
    settings: ProjectionSettings | None = None,
    audit: bool = False,
    version: int = 1,
) -> ProjectionSpec:
    """The projection spec (``audit=True`` records every applied delivery; for tests) of
    ``version`` (named ``version_name(name, version)``, writing ``view_table(version)``)."""
    return ProjectionSpec(
        version_name(name, version),
        "show",
        _Factory(audit, version),
        (SHOW,),
        n_slices,
        settings or ProjectionSettings(),
    )


def reservations_version(version: int) -> ProjectionSpec:
    """The spec builder of the projection's versions (``projection deploy/switch --spec``)."""
    return reservations_projection(version=version)


RESERVATIONS = reservations_projection()


async def names_of(session: CassandraSession, keyspace: str, customer: str) -> list[str]:
    """The names ``customer``'s rows of the view hold (``"<forgotten>"`` once scrubbed)."""
    rows = await session.select_all(
        f"SELECT name FROM {validate_identifier(keyspace, 'keyspace')}.{VIEW_TABLE} "
        "WHERE customer = ?",
        (customer,),
        profile=RAW_PROFILE,
    )
    return sorted(r[0] or "" for r in rows)


async def reservations_of(
    session: CassandraSession, keyspace: str, customer: str, *, projection: str = NAME
) -> list[tuple[str, str]]:
    """The ``(show, seat)`` pairs ``customer`` holds, sorted, as the live version of the view
    (``projection``'s alias) has them now."""
    version = await live_version(session, keyspace, projection)
    rows = await session.select_all(
        f"SELECT show, seat FROM {validate_identifier(keyspace, 'keyspace')}.{view_table(version)} "
        "WHERE customer = ?",
        (customer,),
        profile=RAW_PROFILE,
    )
    return sorted((r[0], r[1]) for r in rows)
