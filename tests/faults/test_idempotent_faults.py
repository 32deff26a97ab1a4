"""Fault schedules with idempotency keys on (issue 15), in-memory, through the fault kit and the
real EntityCore/AggregateHost (the harness of the issue-10 property tests): lost responses,
driver-style duplicate sends, timeouts that land later, stalls, second writers, host crashes and
passivations. Every caller sends each command under one key (its command id, like an upstream
message id) and re-sends it under that key whenever the outcome is unknown or, after an unknown,
not applied — as ``EntityRef`` does — until it has an answer or its deadline passes.

Checked per schedule: the history checker (now with "each key applied at most once"), plus the
promise to callers: every command ends with a reply or a rejection before its deadline (no
unknown outcome left), and every acknowledged key is stored exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import pytest
from fault_harness import Harness, Schedule
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_fault_cassandra import KINDS, featuring
from test_fault_properties import SETTINGS, schedules
from unit_guard import no_ray  # noqa: F401

from raysource.examples.ledger import Append
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.idempotency import KEY_FIELD, Keyed
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.history import assert_no_violations

# a caller's deadline per command: 4 s *and* 20,000 loop turns (in-memory steps take a few
# turns), so a starved machine never runs it out (see fault_harness.Patience)
DEADLINE_S = 4.0


class KeyedHarness(Harness):
    """The issue-10 harness with keys: each command is sent as ``Keyed(Append, key=command
    id)`` and re-sent under the same key until settled or the deadline passes."""

    def __init__(self, *a, deadline: float = DEADLINE_S, **kw) -> None:
        super().__init__(*a, call_timeout=deadline, **kw)
        self.deadline = deadline
        self.final: dict[str, str] = {}

    async def _ask(self, host_idx, eid, cmd, amount, caller):  # type: ignore[override]
        host = self.hosts[host_idx]
        task = asyncio.ensure_future(host.ask(eid, Keyed(Append(cmd, amount), cmd)))
        self.inflight[host_idx].add(task)

        async def crashed_is_unknown():
            from raysource.errors import HostCrashedError

            try:
                return await task
            except asyncio.CancelledError:
                if task.cancelled():
                    raise HostCrashedError(f"host {host_idx} crashed") from None
                raise
            finally:
                self.inflight[host_idx].discard(task)

        obs = await self.history.ask(cmd, self._bounded(cmd, crashed_is_unknown()), caller=caller)
        return obs

    async def _caller(self, idx: int) -> None:
        for n, (c, h, e, amount) in enumerate(self.schedule.commands):
            if c != idx:
                continue
            cmd = f"{self.tag}:c{idx}-{n}"
            spent = self.patience.start(self.clock)
            unknown_seen, pause = False, 0.001
            while True:
                obs = await self._ask(
                    h, self.entities[("e1", "e2").index(e)], cmd, amount, f"caller{idx}"
                )
                out = obs.outcome
                unknown_seen = unknown_seen or out == "unknown"
                settled = out in ("ok", "rejected") or (
                    out == "not_applied" and not unknown_seen and not _transient(obs.value)
                )
                if settled or spent():
                    self.final[cmd] = out if settled else "unknown"
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)


def _transient(err: BaseException) -> bool:
    from raysource.errors import AggregateStoppedError, PersistFailedError
    from raysource.journal.errors import JournalError

    return isinstance(err, (AggregateStoppedError, PersistFailedError, JournalError))


async def _run(schedule: Schedule, journal=None, snapshots=None, **kw):
    h = KeyedHarness(
        schedule, journal or InMemoryJournal(), snapshots or InMemorySnapshotStore(), **kw
    )
    run = await h.run()
    keys: Counter[str] = Counter()
    for pid in run.persistence_ids:
        async for ev in h.inner_journal.replay(pid):
            if ev.metadata.get(KEY_FIELD):
                keys[ev.metadata[KEY_FIELD]] += 1
    return h, run, keys


def _check(schedule: Schedule, run_in=asyncio.run, fired: list | None = None, **kw) -> Counter[str]:
    h, run, keys = run_in(_run(schedule, **kw))
    if fired is not None:
        fired.extend(run.fired)
    context = {
        "schedule": schedule,
        "fired": run.fired,
        "final": h.final,
        "outcomes": dict(run.history.counts()),
    }
    assert_no_violations(run.violations, context)
    # the promise to callers: settled before the deadline, acknowledged keys stored once
    left = {c: o for c, o in h.final.items() if o not in ("ok", "rejected", "not_applied")}
    assert not left, f"outcome unknown at the deadline: {left} {context}"
    for cmd, out in h.final.items():
        if out == "ok":
            assert keys[cmd] == 1, f"{cmd}: acknowledged, stored {keys[cmd]} times {context}"
        else:
            assert keys[cmd] == 0, f"{cmd}: {out}, yet stored {context}"
    return Counter(h.final.values()) + Counter(
        f"attempt:{o.outcome}" for o in run.history.observations
    )


TOTALS: Counter[str] = Counter()


@settings(max_examples=300, **SETTINGS)
@given(schedules())
def test_keyed_callers_see_every_command_settled_and_applied_once(schedule: Schedule) -> None:
    TOTALS.update(_check(schedule))


def test_the_keyed_schedules_did_meet_unknown_outcomes() -> None:
    """The run above is only worth something if callers did hit unknown outcomes and settled
    them by re-sending: the attempts must include unknown ones, the final answers none."""
    print(f"keyed fault schedules: {dict(TOTALS)}")
    assert TOTALS["attempt:unknown"] > 20, TOTALS
    assert TOTALS["ok"] > 100 and TOTALS["unknown"] == 0, TOTALS


@settings(max_examples=40, **SETTINGS)
@given(st.integers(1, 6), st.integers(0, 60), st.booleans())
def test_lost_responses_and_duplicates_with_a_crash(nth: int, crash_at: int, dup: bool) -> None:
    from fault_harness import FaultSpec

    kind = "duplicate" if dup else "lose_response"
    schedule = Schedule(
        tuple((i % 3, i % 2, "e1", 1 + i) for i in range(8)),
        (FaultSpec(kind, "append", nth), FaultSpec("lose_response", "append", nth + 2)),
        crashes=((crash_at, 0),),
    )
    TOTALS.update(_check(schedule))


# ------------------------------------------------------------------ the same on real Cassandra


@pytest.fixture(scope="module")
def cassandra_store(cassandra_contact, cassandra_keyspace):
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.snapshots.cassandra import CassandraSnapshotStore

    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    loop = asyncio.new_event_loop()
    journal = loop.run_until_complete(CassandraJournal.connect(cfg, create_schema=True))
    yield loop, journal, CassandraSnapshotStore(journal.session, cfg)
    loop.run_until_complete(journal.close())
    loop.close()


@pytest.mark.cassandra
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=2,
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
def test_keyed_schedules_on_cassandra(cassandra_store, kind: str, data) -> None:
    """Two schedules per fault kind (featuring it early) on the real journal and snapshot store:
    duplicate sends and lost responses through real LWTs, and driver-level faults below the
    journal (its own re-read decides), with keys; same checks. The featured fault must fire
    (a schedule that never reaches its point is discarded and another drawn)."""
    from raysource.testing.driver_faults import DriverFault, DriverFaults

    loop, journal, snapshots = cassandra_store
    driver = None
    if kind.startswith("driver:"):
        # the driver-level faults target the per-append guard's conditional batch and its
        # deciding serial re-read (the epoch guard has its own schedules)
        journal = type(journal)(journal.session, replace(journal.config, guard="per-append"))
        schedule = data.draw(schedules(max_faults=2))
        featured = kind.split(":")[1]
        driver = DriverFaults([DriverFault(featured, nth=data.draw(st.integers(1, 2)))])
    else:
        schedule = data.draw(featuring(kind))
        featured = kind
    fired: list[str] = []
    TOTALS.update(
        _check(
            schedule,
            loop.run_until_complete,
            journal=journal,
            snapshots=snapshots,
            deadline=20.0,
            turn_s=0.002,
            check_tags=False,
            driver=driver,
            fired=fired,
        )
    )
    assume(featured in {f.split("@")[0] for f in fired})
    if driver is not None:
        assert driver.serial_reads >= 1, (schedule, fired)
