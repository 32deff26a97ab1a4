"""A hostile second read of durable timers (issue 17), part 2: the index and the pump (a
cursor that hides rows, a row written behind it, a stale fire deleting a live row, a timer
that stops its shard, clock skew, two pumps), bad input at schedule time, the test kit's
clock, and the real Cassandra store. The world: ``timer_attack_world``; part 1:
``test_timers_attack.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from timer_attack_world import (
    ALARM,
    NO_KEYS,
    T0,
    Arm,
    ArmAt,
    Armed,
    Clock,
    Opaque,
    Poke,
    Ring,
    Unregistered,
    World,
    _scheduling,
    check_agreement,
    check_agreement_on,
    expected_rings,
)
from unit_guard import no_ray  # noqa: F401

from raysource.errors import (
    ConfigError,
    HandlerError,
    NotAppliedError,
    PayloadTooLargeError,
    RaysourceError,
    UnserializableError,
)
from raysource.runtime.aggregate import persist, schedule
from raysource.runtime.core import EntityCore
from raysource.runtime.shard_id import shard_of
from raysource.sharding.timer_pump import TimerSettings
from raysource.testing.faults import interleave

# ------------------------------------- 4. the index: every pending timer has a row the pump reaches


def test_a_far_future_first_timer_does_not_hide_nearer_ones_of_its_shard() -> None:
    """The shard's first ever row is a year ahead; a timer due in a minute, written after it
    into the same shard, still fires on time (the cursor must not start at the first row's
    bucket)."""

    async def main():
        w = World()
        await w.core().handle(Arm("far", timers=(("year", 365 * 86400),)))
        await w.core().handle(Arm("near", timers=(("minute", 60),)))
        await check_agreement(w)
        w.clock.now += timedelta(seconds=61)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("near", "minute"): 1})

    asyncio.run(main())


def test_a_slow_append_does_not_put_its_row_behind_the_cursor() -> None:
    """The bucket is chosen from the flush's timestamp; the append then takes 3 minutes (a
    stalled store) while the pump moves the cursor past that (empty, settled) bucket. The row
    written afterwards must still be reachable."""

    async def main():
        w = World()
        other = next(f"o{i}" for i in range(100) if shard_of(f"o{i}", 4) == shard_of("e1", 4))
        await w.core(other).handle(Arm("x", timers=(("t", 0),)))  # the shard's cursor: now
        pump = w.pump()

        async def meanwhile():
            for _ in range(3):
                w.clock.now += timedelta(minutes=1)
                await pump.run_once()
                await pump.drain()

        w.journal.add(interleave(meanwhile, nth=2))
        await w.core().handle(Arm("slow", timers=(("s", 0),)))
        await check_agreement(w)
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("slow", "s"): 1})
        assert await w.rings(other) == Counter({("x", "t"): 1})

    asyncio.run(main())


def test_a_writer_whose_clock_lags_within_the_settle_time_is_not_lost() -> None:
    """The writer's clock is 40 s behind the pump's (inside the 60 s settle time)."""

    async def main():
        w = World()
        writer = Clock()
        writer.now = w.clock.now - timedelta(seconds=40)
        core = EntityCore(
            ALARM,
            "e1",
            w.journal,
            w.snaps,
            w.ser,
            writer_id="skewed",
            wall_clock=writer,
            timer_store=w.store,
        )
        await core.handle(Arm("x", timers=(("t", 1),)))
        pump = w.pump()
        for _ in range(4):  # the pump's clock runs on; the row is due (by the writer's
            w.clock.now += timedelta(seconds=30)  # clock) long before
            await pump.run_once()
        await core.stop()
        await pump.drain()
        assert await w.rings() == Counter({("x", "t"): 1})

    asyncio.run(main())


def test_two_commands_in_one_flush_scheduling_one_name_leave_no_live_row_of_the_first() -> None:
    """Two commands of one flush schedule "a" (the second replaces the first): the index must
    not keep the first one's row (deleted before it was written)."""

    async def main():
        w = World()
        core = w.core()
        await asyncio.gather(
            core.handle(Arm("o1", timers=(("a", 10),))),
            core.handle(Arm("o2", timers=(("a", 1000),))),
        )
        assert core.stats.writes == 1
        assert [r.timer_id for r in w.store.rows()] == ["a@2"]

    asyncio.run(main())


def test_a_stale_fire_does_not_delete_the_row_of_a_reschedule_with_the_same_due_time() -> None:
    """The pump reads a@1's row and sends its fire; before it arrives the aggregate re-arms
    "a" at the same instant (same bucket, due time and name: the same row key, new id a@2).
    The stale fire of a@1 is answered and its row deleted: that must not delete a@2's."""

    async def main():
        w = World()
        at_ms = w.clock.ms() + 5_000
        await w.core().handle(ArmAt("o1", "a", at_ms))
        w.clock.now += timedelta(seconds=10)
        real_send = w.send

        async def send(type_name, pid, fires):  # the re-arm overtakes the fire
            await w.core().handle(ArmAt("o2", "a", at_ms))
            return await real_send(type_name, pid, fires)

        pump = w.pump()
        pump.send = send
        assert await pump.run_once() == 1
        await pump.drain()
        assert await check_agreement(w) == {"a": "a@2"}  # still pending, so it needs its row
        pump.send = real_send
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("o2", "a"): 1})

    asyncio.run(main())


def test_a_timer_whose_fire_always_fails_does_not_stop_its_shard() -> None:
    """One aggregate's fires fail forever (its activation cannot start); its row pins the
    shard's cursor. Timers of other aggregates of that shard due hours later (beyond the
    pump's buckets_per_pass window from the cursor) must still fire."""

    async def main():
        w = World()
        same = [f"x{i}" for i in range(200) if shard_of(f"x{i}", 4) == shard_of("e1", 4)]
        poisoned, healthy = same[0], same[1]
        await w.core(poisoned).handle(Arm("p", timers=(("t", 1),)))
        await w.core(healthy).handle(Arm("h", timers=(("t", 5 * 3600),)))  # in 5 hours
        real_send = w.send

        async def send(type_name, pid, fires):
            if pid.endswith(f"|{poisoned}"):
                raise ConnectionError("its host cannot start")
            return await real_send(type_name, pid, fires)

        pump = w.pump()
        pump.send = send
        for _ in range(6 * 12):  # six hours, a pass every five minutes
            w.clock.now += timedelta(minutes=5)
            await pump.run_once()
            await pump.drain()
            await asyncio.sleep(0.002)
        assert await w.rings(healthy) == Counter({("h", "t"): 1})
        assert await w.rings(poisoned) == Counter()
        pump.send = real_send  # healed: it fires (once) after all
        await pump.run_once()
        await pump.drain()
        assert await w.rings(poisoned) == Counter({("p", "t"): 1})

    asyncio.run(main())


def test_the_pump_forgets_retry_waits_of_rows_that_went_elsewhere() -> None:
    """Rows whose fire failed and that another pump then fired leave their retry wait
    behind; the table of waits must not grow without bound."""

    async def main():
        w = World()
        pump = w.pump()
        for i in range(12_000):
            pump._retry_at[("alarm", 0, 0, i, "p", "n", f"n@{i}")] = 0.0  # noqa: SLF001
        await pump._fire("alarm", [])  # noqa: SLF001
        assert len(pump._retry_at) == 0  # noqa: SLF001

    asyncio.run(main())


def test_a_pump_cannot_retire_buckets_faster_than_writers_assume() -> None:
    with pytest.raises(ConfigError, match="settle_ms"):
        TimerSettings(settle_ms=1000)
    assert TimerSettings(settle_ms=120_000).settle_ms == 120_000


@pytest.mark.parametrize("seed", range(12))
def test_random_fleets_with_two_pumps_and_a_flaky_route_ring_each_live_timer_once(seed) -> None:
    """Five aggregates over four shards, two pumps at once, fires that fail at random (the
    route), clocks jumping up to an hour, writers up to 40 s apart (inside the settle time),
    restarts: at the end every timer the journals say is live rang exactly once."""
    import random

    async def main():
        rng = random.Random(1000 + seed)
        w = World(dataclasses.replace(rng.choice([ALARM, NO_KEYS]), number_of_shards=4))
        eids = [f"f{i}" for i in range(5)]
        real_send = w.send

        async def flaky(type_name, pid, fires):
            if rng.random() < 0.25:
                raise ConnectionError("injected: route down")
            return await real_send(type_name, pid, fires)

        pumps = [w.pump(), w.pump()]
        for p in pumps:
            p.send = flaky
        for step in range(40):
            move, eid = rng.random(), rng.choice(eids)
            if move < 0.45:
                names = rng.sample("abc", rng.randint(1, 2))
                skew = timedelta(seconds=rng.choice([-40, 0, 40]))
                w.clock.now += skew  # this writer's clock
                await w.core(eid).handle(
                    Arm(
                        f"{eid}-{step}",
                        timers=tuple((n, rng.choice([0, 50, 600, 3000])) for n in names),
                        cancel=tuple(rng.sample("abc", rng.randint(0, 1))),
                    )
                )
                w.clock.now -= skew
            elif move < 0.55:
                await w.restart()
            else:
                w.clock.now += timedelta(seconds=rng.choice([10, 70, 700, 3600]))
                await asyncio.gather(*(p.run_once() for p in pumps))
                await asyncio.gather(*(p.drain() for p in pumps))
                await asyncio.sleep(0.002)
        for p in pumps:
            p.send = real_send
        w.clock.now += timedelta(days=1)
        for _ in range(4):
            await asyncio.gather(*(p.run_once() for p in pumps))
            await asyncio.gather(*(p.drain() for p in pumps))
            await asyncio.sleep(0.002)
        await w.restart()
        for eid in eids:
            assert await check_agreement(w, eid) == {}
            assert await w.rings(eid) == await expected_rings(w, eid), eid
        assert w.store.rows() == []

    asyncio.run(main())


@pytest.mark.cassandra
def test_on_cassandra_a_far_future_first_row_and_a_same_instant_reschedule_lose_nothing(
    cassandra_contact, cassandra_keyspace
) -> None:
    """Two of the defects above, on the real journal and timer store (ensure_cursor's
    IF NOT EXISTS, the timer id in the row key): a shard whose first row is a year ahead
    still fires a near timer, and a stale fire answered after a re-schedule at the same
    instant does not delete the new row; each rings once."""
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.timers.cassandra import CassandraTimerStore

    async def main():
        host, port = cassandra_contact
        cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        try:
            w = World(journal=journal, store=CassandraTimerStore(journal.session, cfg))
            w.clock.now = datetime.now(UTC)  # the journal's rows carry real times
            await w.core().handle(Arm("far", timers=(("year", 365 * 86400),)))
            at_ms = w.clock.ms() + 30_000
            await w.core().handle(ArmAt("o1", "a", at_ms))
            w.clock.now += timedelta(seconds=40)
            real_send = w.send

            async def send(type_name, pid, fires):  # a re-arm at the same instant overtakes
                await w.core().handle(ArmAt("o2", "a", at_ms))
                return await real_send(type_name, pid, fires)

            pump = w.pump()
            pump.send = send
            assert await pump.run_once() == 1
            await pump.drain()
            pump.send = real_send
            await pump.run_once()
            await pump.drain()
            assert await w.rings() == Counter({("o2", "a"): 1})
            await w.restart()
            assert await check_agreement_on(w) == {"year": "year@1"}
        finally:
            await journal.close()

    asyncio.run(main())


# ------------------ 5. bad input: a typed error at the caller, nothing written, the aggregate alive


@pytest.mark.parametrize(
    "kw",
    [
        dict(after=1e12),
        dict(after=10**30),
        dict(after=2**1100),
        dict(after=float("inf")),
        dict(after=float("nan")),
        dict(after=-1),
        dict(after=True),
        dict(after="5"),
        dict(at=datetime(2030, 1, 1)),
        dict(at="2030-01-01T00:00:00Z"),
        dict(),
        dict(after=1, at=T0),
        dict(name="n" * 201, after=1),
        dict(name="", after=1),
        dict(name=7, after=1),
    ],
    ids=lambda kw: ",".join(f"{k}={str(v)[:12]}" for k, v in kw.items()),
)
def test_weird_schedule_values_are_config_errors_at_once(kw) -> None:
    name = kw.pop("name", "x")
    with pytest.raises(ConfigError):
        schedule(name, Ring("o", "x"), **kw)


def test_one_persist_scheduling_a_name_twice_is_refused_and_writes_nothing() -> None:
    """schedule=[a after 10 s, a after 1000 s] in one persist gave both entries the id
    "a@1": the index kept the first one's row, which then ran the second one's command at
    10 s. Now it is a typed error at the caller (nothing written, the aggregate goes on)."""
    with pytest.raises(ConfigError, match="twice"):
        persist(
            Armed("o"),
            schedule=[
                schedule("a", Ring("o", "a"), after=10),
                schedule("a", Ring("o", "a"), after=1000),
            ],
        )

    async def main():
        w = World()
        with pytest.raises(HandlerError, match="twice"):
            await w.core().handle(Arm("o", timers=(("a", 10), ("a", 1000))))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("o2", timers=(("a", 10),))) == "o2"
        w.clock.now += timedelta(seconds=20)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert await w.rings() == Counter({("o2", "a"): 1})

    asyncio.run(main())


@pytest.mark.parametrize(
    "command,error",
    [
        (Unregistered(1), "HandlerError"),
        (Ring(object(), "x"), "UnserializableError"),
        ("a plain string", "HandlerError"),
        (Armed("an event"), "HandlerError"),
        (Opaque(1), "HandlerError"),
    ],
    ids=["unregistered", "unencodable", "str", "event", "type"],
)
def test_a_timer_command_that_cannot_run_is_refused_when_scheduled(command, error) -> None:
    """Not registered, not encodable, or not one of the type's commands: a typed NotApplied
    error at the caller who schedules it (not a silent UnknownCommandError when it fires),
    nothing written or indexed, and the aggregate goes on."""

    async def main():
        w = World(_scheduling(command, after=1))
        with pytest.raises(RaysourceError) as err:
            await w.core().handle(Poke("p"))
        assert type(err.value).__name__ == error and isinstance(err.value, NotAppliedError)
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok", timers=(("y", 1),))) == "ok"
        await w.fire_everything()
        assert await w.rings() == Counter({("ok", "y"): 1})

    asyncio.run(main())


def test_an_unregistered_timer_command_of_a_type_without_declared_commands_is_refused() -> None:
    async def main():
        w = World(dataclasses.replace(_scheduling(Unregistered(1), after=1), commands=()))
        with pytest.raises(UnserializableError):
            await w.core().handle(Poke("p"))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok")) == "ok"  # alive

    asyncio.run(main())


def test_scheduling_without_a_timer_store_is_refused_before_anything_is_written() -> None:
    """An activation built without a timer store used to journal the schedule, fail its
    index write (outcome unknown, stopped) and then fail every later recovery."""

    async def main():
        w = World()
        core = EntityCore(
            ALARM, "e1", w.journal, w.snaps, w.ser, writer_id="bare", wall_clock=w.clock
        )
        with pytest.raises(HandlerError, match="timer store"):
            await core.handle(Arm("o", timers=(("a", 1),)))
        assert await core.handle(Poke("p")) == "p"  # alive, and nothing of "o" written
        assert [type(e).__name__ for e in await w.decoded()] == ["Poked"]
        await core.stop()

    asyncio.run(main())


def test_a_persist_whose_timers_exceed_the_payload_limit_is_refused_whole() -> None:
    """20,000 timers in one persist (each command small, together ~2 MB of metadata in one
    event: more than a Cassandra cell should carry): PayloadTooLargeError at the caller,
    nothing written or indexed; a reasonable number still goes through."""
    many = tuple((f"t{i}", 60) for i in range(20_000))

    async def main():
        w = World()
        with pytest.raises(PayloadTooLargeError):
            await w.core().handle(Arm("big", timers=many))
        assert await w.events() == [] and w.store.rows() == []
        assert await w.core().handle(Arm("ok", timers=many[:500])) == "ok"
        assert len(w.store.rows()) == 500

    asyncio.run(main())


@pytest.mark.parametrize(
    "at,fires",
    [
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), False),
        (datetime(1, 1, 1, tzinfo=UTC), True),
        (datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=5))), True),
    ],
    ids=["year-9999", "year-1", "utc+5"],
)
def test_extreme_due_times_are_stored_and_fire_when_due(at, fires) -> None:
    """A due time at the end of the calendar stays pending (and hides no nearer timer); one
    in year 1 (or in another zone, already past) fires at once."""

    async def main():
        w = World(_scheduling(Ring("p", "x"), at=at))
        assert await w.core().handle(Poke("p")) == "p"
        await w.core().handle(Arm("near", timers=(("n", 5),)))
        assert set(await check_agreement(w)) == {"x", "n"}
        w.clock.now += timedelta(seconds=10)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        want = Counter({("near", "n"): 1})
        if fires:
            want[("p", "x")] = 1
        assert await w.rings() == want
        await w.restart()
        assert set(await check_agreement(w)) == (set() if fires else {"x"})

    asyncio.run(main())


# ------------------------------------------------------------------------------------- the test kit


def test_the_kit_fires_a_recurring_timer_at_each_due_time_within_one_advance(monkeypatch) -> None:
    """advance(60) on a 10 s recurring timer: six fires, each at its due time (the events'
    timestamps 10 s apart), like a timer service would deliver them; a timer re-scheduling
    itself without delay is a ConfigError, not a hang."""
    from raysource.testing import testkit
    from raysource.testing.testkit import AggregateTestKit

    with AggregateTestKit(ALARM) as kit:
        kit.run(Arm("o", timers=(("r", 10),), again=10))
        start = kit.now
        fired = kit.advance(60)
        assert [r.reply for r in fired] == ["rang o/r"] * 6
        assert len(kit.pending_timers) == 1 and kit.now >= start + timedelta(seconds=60)
        stamps = [e.timestamp for e in asyncio.run(_stored(kit))][1:]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
        assert all(9.9 < g < 10.5 for g in gaps), gaps
    monkeypatch.setattr(testkit, "MAX_FIRES_PER_ADVANCE", 50)
    with AggregateTestKit(ALARM) as kit:
        kit.run(Arm("o", timers=(("r", 0),), again=0.0001))
        with pytest.raises(ConfigError, match="more than 50 timer fires"):
            kit.advance(1)


async def _stored(kit) -> list:
    return [e async for e in kit.journal.replay(kit.persistence_id)]


def test_a_timer_whose_command_cannot_encode_its_event_is_answered_once() -> None:
    """The timer's command fails on its own (its event cannot be encoded): like a handler
    error, that answers the fire (the row goes, no retry); the core forgets the timer."""

    async def main():
        def h(state, c):
            return (
                persist(Opaque(object()))
                if isinstance(c, Ring)
                else ALARM.command_handler(state, c)
            )

        w = World(dataclasses.replace(ALARM, command_handler=h))
        await w.core().handle(Arm("o", timers=(("a", 1),)))
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()
        assert pump.info()["fired"] == 1 and pump.info()["retried"] == 0
        assert w.store.rows() == [] and list(w.core().timers.pending) == []

    asyncio.run(main())
