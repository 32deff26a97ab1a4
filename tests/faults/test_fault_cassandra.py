"""Random fault schedules against the real Cassandra journal and snapshot store, through the
real EntityCore/AggregateHost, checked by the history checker: the same harness as the
in-memory property tests, fewer and slower schedules.

Two layers of faults. Above the journal (``FaultyJournal``): a duplicate send reaches Cassandra
twice (the second conditional batch is refused with this writer's own rows: must be a success),
a second writer races recoveries and flushes through real lightweight transactions, stalls,
failures. Below it, in the driver (``raysource.testing.driver_faults``), so that the journal's
own decision on an unconfirmed append runs (its serial re-read): a batch executed whose answer
is lost (``lost_response``), a batch answered by a timeout and executed later (``late``).

Every schedule features one fault kind, and that fault must have fired in it (not only somewhere
in the run); for a driver fault, the journal's deciding serial read must have followed. Tag
streams are checked once at the end, over every schedule, after the visibility delay."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import replace

import pytest
from fault_harness import LEDGER_T, POINTS, SER, Harness, Schedule
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from seeds import REPLAY, fresh
from test_fault_properties import fault_specs, schedules

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.driver_faults import DRIVER_FAULT_KINDS, DriverFault, DriverFaults
from raysource.testing.history import History, assert_no_violations, check_history

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]

DELAY = 0.5  # tag visibility delay of this module
RUNS: list = []
DISCARDED: Counter = Counter()  # schedules per kind whose featured fault could not fire


@pytest.fixture(scope="module")
def store(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=DELAY,
    )
    loop = asyncio.new_event_loop()
    journal = loop.run_until_complete(CassandraJournal.connect(cfg, create_schema=True))
    snapshots = CassandraSnapshotStore(journal.session, cfg)
    # the driver-level faults target the per-append guard's conditional batch and its deciding
    # serial re-read (the epoch guard has its own schedules: tests/faults/test_fence_schedules.py)
    per_append = CassandraJournal(journal.session, replace(cfg, guard="per-append"))
    PER_APPEND.append(per_append)
    yield loop, journal, snapshots
    loop.run_until_complete(journal.close())
    loop.close()


@st.composite
def featuring(draw, kind: str) -> Schedule:
    """A random schedule that has (at least) one fault of ``kind``, early enough to fire."""
    s = draw(schedules(max_faults=2))
    f = draw(fault_specs(kinds=(kind,)))
    return dataclasses.replace(s, faults=(dataclasses.replace(f, nth=min(f.nth, 2)),) + s.faults)


EXAMPLES = 8  # fixed schedules per featured kind
FRESH = 2  # and schedules per kind from this run's fresh seed
#: the per-append journal of the module's store (driver-level schedules run on it)
PER_APPEND: list[CassandraJournal] = []
KINDS = sorted(POINTS) + [f"driver:{k}" for k in DRIVER_FAULT_KINDS]


@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_fault_schedules_on_cassandra(store, kind: str, data) -> None:
    _one_schedule(store, kind, data)


@pytest.mark.parametrize("kind", KINDS)
@fresh(FRESH)
@given(data=st.data())
def test_fresh_seed_fault_schedules_on_cassandra(store, kind: str, data) -> None:
    """The same, on schedules drawn from this run's fresh seed (tests/support/seeds.py: printed in
    the
    header; RAYSOURCE_TEST_SEED replays)."""
    _one_schedule(store, kind, data)


def _one_schedule(store, kind: str, data) -> None:  # noqa: ANN001
    loop, journal, snapshots = store
    driver = None
    if kind.startswith("driver:"):  # a random schedule plus the driver fault on batch 1 or 2
        journal = PER_APPEND[-1]
        schedule = data.draw(schedules(max_faults=2))
        featured = kind.split(":")[1]
        driver = DriverFaults([DriverFault(featured, nth=data.draw(st.integers(1, 2)))])
    else:
        schedule = data.draw(featuring(kind))
        featured = kind

    async def one():
        h = Harness(
            schedule,
            journal,
            snapshots,
            turn_s=0.002,
            check_tags=False,
            call_timeout=20.0,
            driver=driver,
        )
        return await h.run()

    run = loop.run_until_complete(one())
    context = {
        "schedule": schedule,
        "fired": run.fired,
        "driver": driver and driver.faults,
        "fresh seed": REPLAY,
    }
    assert_no_violations(run.violations, context)
    if featured not in {f.split("@")[0] for f in run.fired}:
        # its point was never reached (e.g. no third snapshot save): sound, but not a test of
        # this kind. Discarded: hypothesis draws another, so each kind counts EXAMPLES
        # schedules in which its fault fired (and fails as Unsatisfiable if it never does).
        DISCARDED[kind] += 1
        assume(False)
    RUNS.append(run)
    if driver is not None:  # the journal decided the unconfirmed append with its re-read
        assert driver.serial_reads >= 1, context


def test_every_stored_event_reached_its_tag_stream(store) -> None:
    """After the visibility delay, the whole history of every schedule again, tags included."""
    loop, journal, _ = store
    assert len(RUNS) == (EXAMPLES + FRESH) * len(KINDS), f"{len(RUNS)} schedules ran"
    history = History([o for r in RUNS for o in r.history.observations])

    async def check():
        await asyncio.sleep(DELAY * 2)
        return await check_history(
            history,
            journal,
            aggregate_type=LEDGER_T,
            serialization=SER,
            persistence_ids=[p for r in RUNS for p in r.persistence_ids],
            command_of=lambda ev: ev.op_id,
            categorized=False,
        )

    fired = sorted({f.split("@")[0] for r in RUNS for f in r.fired})
    assert_no_violations(
        loop.run_until_complete(check()),
        {"schedules": len(RUNS), "outcomes": dict(history.counts())},
    )
    writes = sum(r.writes for r in RUNS)
    print(
        f"{len(RUNS)} schedules on Cassandra, {writes} appends, outcomes "
        f"{dict(history.counts())}, fault kinds fired: {fired}, discarded (featured fault "
        f"never reached): {dict(DISCARDED)}"
    )
    assert writes > len(RUNS) and set(fired) == set(POINTS) | set(DRIVER_FAULT_KINDS), fired
