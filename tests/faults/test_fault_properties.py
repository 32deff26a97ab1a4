"""Property tests: random fault schedules on the in-memory journal, through the real
EntityCore/AggregateHost, with several concurrent activations and callers; every schedule's
history is checked against the journal (``raysource.testing.history``). 0 violations allowed.

Schedules (see ``fault_harness``): 3 callers, 2 hosts + an interloper host, 2 entities, up to
10 commands, up to 4 faults of every kind of ``raysource.testing.faults`` at every point they
apply to, host crashes and passivations at random moments."""

from __future__ import annotations

import asyncio

import pytest
from fault_harness import ENTITIES, POINTS, FaultSpec, Schedule, run_schedule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seeds import REPLAY, fresh
from unit_guard import no_ray  # noqa: F401

from raysource.testing.history import assert_no_violations

F = FaultSpec
# The four defects of issue 10 as the smallest schedules that showed them on the pre-fix tree
# (72f749b); each is a violation there and none here. Kept as fixed regression cases.
MINIMAL = {
    # a lost response re-sent by the driver: the refused re-send was taken as "fenced", the
    # caller re-sent a command that was stored (applied twice)
    "1-duplicate-send": Schedule(
        ((0, 0, "e1", 1), (0, 0, "e1", 1)), (F("duplicate", "append", 1),)
    ),
    # a second writer appends between a recovery's replay and its highest read: the new
    # activation skipped that event (reply, live state and even its snapshot wrong)
    "2-interleaved-recovery": Schedule(
        ((0, 0, "e1", 1), (0, 1, "e1", 2)), (F("interleave", "highest", 2),)
    ),
    "2-stalled-recovery": Schedule(
        ((0, 0, "e1", 1), (1, 1, "e1", 2), (0, 0, "e1", 3)), (F("stall", "highest", 2),), release=30
    ),
    # a two-command flush loses its tag rows: recovery re-tagged only the last command
    "3-flush-tags": Schedule(
        ((0, 0, "e1", 1), (1, 0, "e1", 2), (2, 0, "e1", 3)),
        (F("stall", "append", 1), F("tag_crash", "append", 2)),
        release=20,
    ),
    # stored, unconfirmed, and the re-read failed: answered PersistFailedError, re-sent, twice
    "4-failed-reread": Schedule(
        ((0, 0, "e1", 1), (0, 0, "e1", 1)), (F("tag_crash", "append", 1), F("fail", "replay", 2))
    ),
}

commands = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1), st.sampled_from(ENTITIES), st.integers(1, 9)),
    min_size=2,
    max_size=10,
).map(tuple)


@st.composite
def fault_specs(draw, kinds=tuple(POINTS)):
    kind = draw(st.sampled_from(kinds))
    return FaultSpec(
        kind,
        draw(st.sampled_from(POINTS[kind])),
        draw(st.integers(1, 6)),
        after=draw(st.booleans()) if kind in ("stall", "interleave") else False,
        variant=draw(st.integers(0, 1)) if kind in ("timeout", "tag_crash") else 0,
    )


def schedules(kinds=tuple(POINTS), max_faults=4):
    return st.builds(
        Schedule,
        commands=commands,
        faults=st.lists(fault_specs(kinds), min_size=1, max_size=max_faults).map(tuple),
        crashes=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 1)), max_size=1).map(tuple),
        passivations=st.lists(
            st.tuples(st.integers(0, 60), st.integers(0, 1), st.sampled_from(ENTITIES)), max_size=2
        ).map(tuple),
        release=st.integers(0, 60),
    )


def _check(schedule: Schedule, **kw) -> None:
    run = asyncio.run(run_schedule(schedule, **kw))
    assert_no_violations(
        run.violations,
        {
            "schedule": schedule,
            "fired": run.fired,
            "outcomes": dict(run.history.counts()),
            "fresh seed": REPLAY,
        },
    )


SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_the_minimal_schedules_of_the_four_defects(name: str) -> None:
    _check(MINIMAL[name])


@settings(max_examples=1400, **SETTINGS)
@given(schedules())
def test_random_fault_schedules_keep_every_promise(schedule: Schedule) -> None:
    _check(schedule)


@settings(max_examples=600, **SETTINGS)
@given(schedules(kinds=("interleave", "stall", "delay", "lose_response", "timeout"), max_faults=3))
def test_a_second_writer_at_every_step_of_recovery_and_flush(schedule: Schedule) -> None:
    _check(schedule)


@settings(max_examples=300, **SETTINGS)
@given(schedules())
def test_keyed_commands_resent_after_unknown_outcomes_apply_once(schedule: Schedule) -> None:
    """Callers send ``Keyed`` commands (issue 15) and re-send unknown outcomes too: each key is
    applied at most once (``key_applied_twice``) and a re-send answers the original reply."""
    _check(schedule, keyed=True)


# The same properties on schedules drawn from this run's fresh seed (tests/support/seeds.py:
# printed in
# the header and in a failure; RAYSOURCE_TEST_SEED replays), on top of the fixed ones above.
@fresh(300)
@given(schedules())
def test_fresh_seed_random_fault_schedules(schedule: Schedule) -> None:
    _check(schedule)


@fresh(100)
@given(schedules(kinds=("interleave", "stall", "delay", "lose_response", "timeout"), max_faults=3))
def test_fresh_seed_second_writer(schedule: Schedule) -> None:
    _check(schedule)


@fresh(100)
@given(schedules())
def test_fresh_seed_keyed_commands(schedule: Schedule) -> None:
    _check(schedule, keyed=True)


def test_a_hang_is_declared_only_once_both_turns_and_seconds_are_spent() -> None:
    """The harness's patience: a call that never answers is a hang; a call that is slow in
    seconds because the loop was starved (a loaded machine) but took few turns is not."""
    import time

    from fault_harness import Harness

    from raysource.journal.memory import InMemoryJournal
    from raysource.snapshots.memory import InMemorySnapshotStore

    async def go() -> None:
        h = Harness(
            Schedule((), ()),
            InMemoryJournal(),
            InMemorySnapshotStore(),
            call_timeout=0.2,
            call_turns=500,
        )
        h.clock.start()
        try:
            never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            with pytest.raises(TimeoutError):
                await h._bounded("never", never)
            assert h.hangs == ["never"] and never.cancelled() and h.clock.turns > 500

            async def starved() -> str:
                time.sleep(0.5)  # the process gets no CPU for longer than the seconds budget
                for _ in range(3):  # then a few more steps, each a short starvation too
                    await asyncio.sleep(0)
                    time.sleep(0.1)
                return "answer"

            assert await h._bounded("slow", starved()) == "answer"
            assert h.hangs == ["never"]
        finally:
            h.clock.stop()

    asyncio.run(go())
