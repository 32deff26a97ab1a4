"""``projection verify`` after retention (issue 27) on real Cassandra: a view that applied every
event verifies COMPLETE after the cleaner removed the show's events up to its mark (the rows
those events made are not reported as unexpected, and the events are not expected), while a
seat settled after the mark is still checked exactly (a lost row is found); a view that lagged
behind the mark is reported as not having applied the purged events."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from raysource.examples.reservations_view import (
    ReservationsByCustomer,
    reservations_projection,
    view_table,
)
from raysource.examples.seats import SHOW, CancelReservation, ReserveSeat
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.retention import RetentionCleaner
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.retention import KeepFromSnapshot
from raysource.readside.verify import tag_events, verify_projection
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.cassandra import CassandraSnapshotStore

pytestmark = pytest.mark.cassandra

RETAINED = dataclasses.replace(
    SHOW, snapshot=SnapshotPolicy(every_n_events=3, keep=2), retention=KeepFromSnapshot(2)
)


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        partition_size=4,
        request_timeout=30.0,
        eventual_consistency_delay=0.4,
    )


async def test_verify_against_the_retention_mark(config):
    session = await CassandraSession.open(config, create_schema=True)
    try:
        journal = CassandraJournal(session, config)
        show = f"s{uuid.uuid4().hex[:6]}"
        pid = RETAINED.persistence_id(show)
        core = EntityCore(
            RETAINED,
            show,
            journal,
            CassandraSnapshotStore(session, config),
            serialization_for(RETAINED, StoreSpec.for_cassandra(config), journal),
            writer_id="w1",
        )
        for cmd in (  # snapshots at 3, 6, 9: the mark is 6
            ReserveSeat("A1", "c1"),
            ReserveSeat("A2", "c2"),
            CancelReservation("A1", "c1"),
            ReserveSeat("A3", "c3"),
            ReserveSeat("A1", "c4"),
            ReserveSeat("A4", "c5"),
            CancelReservation("A3", "c3"),  # 7: after the mark
            ReserveSeat("A5", "c6"),
            ReserveSeat("A6", "c7"),
            ReserveSeat("A7", "c8"),
        ):
            await core.handle(cmd)
        await core.stop()
        await asyncio.sleep(config.eventual_consistency_delay + 0.2)  # the tag query's cutoff

        full, lagging = reservations_projection(), reservations_projection(version=2)
        views = []
        for version in (1, 2):
            view = ReservationsByCustomer(session, config.keyspace, version=version)
            await view.global_prepare()
            await view.prepare()
            views.append(view)
        events = [e for e in await tag_events(journal, full) if e.persistence_id == pid]
        assert [e.sequence_nr for e in events] == list(range(1, 11))
        await views[0].handle_batch(events)
        await views[1].handle_batch(events[:4])  # a view that lags at #4

        report = await RetentionCleaner(journal, RETAINED.name, RETAINED.retention).run()
        assert [(p.persistence_id, p.mark) for p in report.plans] == [(pid, 6)]

        ok = await verify_projection(full, journal, views[0])
        assert ok.problems == [], ok.lines()
        assert ok.marks.get(pid) == 6 and ok.used_marks
        assert "verified from their retention mark" in ok.lines()[0]
        # the same view checked as if the marks were unknown: the purged rows look unexpected
        after = [e for e in await tag_events(journal, full) if e.persistence_id == pid]
        assert [e.sequence_nr for e in after] == [7, 8, 9, 10]
        blind = await views[0].verify(after)
        assert f"unexpected row ('c2', '{show}', 'A2')" in blind

        late = await verify_projection(lagging, journal, views[1])
        mine = [p for p in late.problems or [] if pid in p]
        assert any(f"{pid} #5-6 (below the retention mark 6" in p for p in mine), mine
        assert f"not applied: {pid} #7-10 (watermark 4)" in mine

        # a row settled after the mark is checked exactly; a purged one is left alone
        table = f"{config.keyspace}.{view_table(1)}"
        for customer, seat in (("c6", "A5"), ("c2", "A2")):
            await session.execute(
                f"DELETE FROM {table} WHERE customer = ? AND show = ? AND seat = ?",
                (customer, show, seat),
            )
        lost = await verify_projection(full, journal, views[0])
        assert [p for p in lost.problems or [] if show in p] == [
            f"missing row ('c6', '{show}', 'A5')"
        ]
    finally:
        await session.close()
