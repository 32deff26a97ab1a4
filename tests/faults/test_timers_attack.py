"""A hostile second read of durable timers (issue 17), part 1: atomicity, at most once,
replay and snapshots. In memory and Ray-free: every test tries to break one promise of
:mod:`raysource.runtime.timers` with the fault kit, duplicate and racing fires, restarts and
snapshots, and checks what the callers saw against the journal, the pending-timer table and
the index (the world: ``timer_attack_world``). Part 2 (the index, the pump, bad input, the
test kit, the real node): ``test_timers_attack_index.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import timedelta

import pytest
from timer_attack_world import (
    ALARM,
    ARM1,
    ARM2,
    NO_KEYS,
    T0,
    AlarmState,
    Arm,
    FlakyStore,
    Get,
    Poke,
    Ring,
    World,
    _scheduling,
    attempt,
    check_agreement,
    expected_rings,
)
from unit_guard import no_ray  # noqa: F401

from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.core import EntityCore
from raysource.runtime.timers import TimerFire
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.faults import (
    delay,
    duplicate,
    fail,
    interleave,
    lose_response,
    tag_crash,
    timeout,
)

# ---------------------------------------------------------- 1. a schedule is atomic with its events


@pytest.mark.parametrize(
    "fault",
    [
        fail(nth=2),
        lose_response(nth=2),
        duplicate(nth=2),
        timeout(nth=2),
        timeout(nth=2, land=0.01),
        tag_crash(nth=2),
        delay(0, nth=2),
    ],
    ids=str,
)
def test_a_faulty_append_never_splits_a_schedule_from_its_events(fault) -> None:
    """Whatever the second append does, after recovery the table, the journal and the index
    agree, and firing everything rings exactly the journal's pending timers, once each."""

    async def main():
        w = World(faults=[fault])
        assert await attempt(w.core().handle(ARM1)) == "ok"
        seen = await attempt(w.core().handle(ARM2))
        await asyncio.sleep(0.05)  # a late write lands meanwhile
        await w.restart()
        stored = "armed:op2" in (await w.core().handle(Get())).log
        assert seen != "ok" or stored, "an acknowledged schedule was lost"
        assert seen != "not_applied" or not stored, "a failed schedule was stored"
        pending = await check_agreement(w)
        want = {"a": "a@2", "c": "c@2"} if stored else {"a": "a@1", "b": "b@1"}
        assert pending == want
        await w.fire_everything()
        op = "op2" if stored else "op1"  # ARM1 is #1, ARM2 #2: the ids name their command
        assert await w.rings() == Counter({(op, name): 1 for name in want})
        assert w.store.rows() == [], "a fired (or stale) timer's row was left in the index"
        await w.restart()
        assert await check_agreement(w) == {}

    asyncio.run(main())


def test_a_write_that_lands_after_the_next_recovery_is_indexed_by_a_later_one() -> None:
    """A timed-out append that lands only after the next activation recovered: its schedule
    is in the journal but was never indexed; the fence at the next write stops that
    activation and the one after repairs the group (still the newest)."""

    async def main():
        gate = asyncio.Event()
        w = World(faults=[timeout(nth=2, land=gate)])
        await w.core().handle(ARM1)
        assert await attempt(w.core().handle(ARM2)) == "unknown"
        await w.restart()
        await w.core().start()  # recovers without op2
        gate.set()
        await asyncio.sleep(0.01)  # op2 lands now, behind the new activation's back
        assert await attempt(w.core().handle(Poke("p"))) == "not_applied"  # fenced
        await w.restart()
        assert await check_agreement(w) == {"a": "a@2", "c": "c@2"}

    asyncio.run(main())


def test_a_second_writer_interleaved_at_the_append_leaves_only_its_own_timers() -> None:
    """Another activation appends (and schedules) between this one's decision and its
    append: this one is fenced (nothing of op2 stored or indexed), the other's timer is
    indexed, and after recovery everything agrees and fires once."""

    async def main():
        w = World()
        await w.core().handle(ARM1)

        async def other():
            rival = EntityCore(
                ALARM,
                "e1",
                w.journal,
                w.snaps,
                w.ser,
                writer_id="rival",
                wall_clock=w.clock,
                timer_store=w.store,
            )
            await rival.handle(Arm("rival", timers=(("r", 30),), cancel=("a",)))
            await rival.stop()

        w.journal.add(interleave(other, nth=2))  # before op2's append: the rival's
        assert await attempt(w.core().handle(ARM2)) == "not_applied"
        await w.restart()
        assert await check_agreement(w) == {"b": "b@1", "r": "r@2"}
        await w.fire_everything()
        assert await w.rings() == Counter({("op1", "b"): 1, ("rival", "r"): 1})
        assert w.store.rows() == []

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(24))
def test_random_histories_under_journal_and_index_faults_ring_each_live_timer_once(seed) -> None:
    """Random arms (schedules, cancels, re-schedules), pokes, restarts, pump passes and
    stray fires (stale ids, duplicates), with the journal failing, losing responses,
    duplicating and timing out, and the index failing or losing responses, at random. Then,
    faults off: the table, the journal and the index agree; firing everything rings each
    timer the journal says is live exactly once and nothing else; callers' answers match
    the journal; no row is left."""
    import random

    async def main():
        rng = random.Random(seed)
        faults = [
            fail(probability=0.08, times=None),
            lose_response(probability=0.08, times=None),
            duplicate(probability=0.05, times=None),
            timeout(probability=0.05, times=None),
            fail("replay", probability=0.03, times=None),
        ]
        agg = dataclasses.replace(
            rng.choice([ALARM, NO_KEYS]),
            snapshot=rng.choice([SnapshotPolicy(), SnapshotPolicy(every_n_events=3, keep=2)]),
        )
        w = World(agg, faults=faults, store=FlakyStore(rng, 0.1), seed=seed)
        seen: dict[str, str] = {}
        ids: list[str] = []
        pump = w.pump()
        for step in range(30):
            move = rng.random()
            if move < 0.4:
                names = rng.sample("abcd", rng.randint(0, 3))
                cmd = Arm(
                    f"op{step}",
                    timers=tuple((n, rng.choice([0, 30, 90, 400])) for n in names),
                    cancel=tuple(rng.sample("abcd", rng.randint(0, 2))),
                )
                seen[cmd.op] = await attempt(w.core().handle(cmd))
                ids += [f"{n}@{w.core().sequence_nr}" for n in names]
            elif move < 0.55:
                await attempt(w.core().handle(Poke(f"p{step}")))
            elif move < 0.65:
                await w.restart()
            elif move < 0.85:
                w.clock.now += timedelta(seconds=rng.choice([5, 60, 200]))
                await pump.run_once()
                await pump.drain()
            elif ids:  # a stray fire: a duplicate, a stale or a guessed id
                tid = rng.choice(ids)
                await attempt(w.core().handle(w.fire_of(TimerFire(tid.rsplit("@", 1)[0], tid))))
        w.journal.faults_enabled, w.store.on = False, False
        await w.restart()
        await check_agreement(w)
        await w.fire_everything()
        await w.restart()
        assert await check_agreement(w) == {}
        assert await w.rings() == await expected_rings(w)
        log = (await w.core().handle(Get())).log
        for op, outcome in seen.items():
            assert outcome != "ok" or f"armed:{op}" in log, f"{op} acknowledged, not stored"
            assert outcome != "not_applied" or f"armed:{op}" not in log, f"{op} stored"
        assert w.store.rows() == []

    asyncio.run(main())


# --------------------------------------------------------------- 2. a timer is applied at most once


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_duplicate_fires_in_every_arrangement_apply_once(agg) -> None:
    """The same fire sent twice in one flush, in two flushes, after a restart, after a
    snapshot and by two pumps at once: one Rang per timer, whether or not the type keeps
    idempotency keys."""

    async def main():
        w = World(dataclasses.replace(agg, snapshot=SnapshotPolicy(every_n_events=1, keep=1)))
        core = w.core()
        await core.handle(Arm("o", timers=(("a", 0), ("b", 0), ("c", 0), ("d", 0))))
        fa, fb, fc, fd = (TimerFire(n, f"{n}@1") for n in "abcd")
        one = await asyncio.gather(*(core.handle(w.fire_of(fa)) for _ in range(3)))
        assert one.count("rang o/a") >= 1 and set(one) <= {"rang o/a", None}
        assert await core.handle(w.fire_of(fb)) == "rang o/b"  # two flushes
        assert await core.handle(w.fire_of(fb)) in ("rang o/b", None)
        await w.restart()  # after a restart (and the snapshot every event takes)
        assert await w.core().handle(w.fire_of(fa)) in ("rang o/a", None)
        await w.restart()
        w.snaps = InMemorySnapshotStore()  # no snapshot: the journal's "tf" alone
        assert await w.core().handle(w.fire_of(fb)) in ("rang o/b", None)
        # c and d: two pumps over the same index at the same time
        w.clock.now += timedelta(seconds=1)
        p1, p2 = w.pump(), w.pump()
        await asyncio.gather(p1.run_once(), p2.run_once())
        await asyncio.gather(p1.drain(), p2.drain())
        await w.restart()
        assert await w.rings() == Counter({("o", n): 1 for n in "abcd"})
        assert await check_agreement(w) == {}

    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
@pytest.mark.parametrize("same_flush", [True, False], ids=["one-flush", "two-flushes"])
def test_a_fire_racing_a_cancel_or_a_reschedule_never_runs_the_old_command(agg, same_flush) -> None:
    """Cancel x, replace y (same name, new id), then the old fires of x and y arrive (and
    the new y's fire twice): only the new y rings, once."""

    async def main():
        w = World(agg)
        core = w.core()
        await core.handle(Arm("o1", timers=(("x", 0), ("y", 0))))
        cmds = [
            Arm("o2", timers=(("y", 0),), cancel=("x",)),
            w.fire_of(TimerFire("x", "x@1")),
            w.fire_of(TimerFire("y", "y@1")),
            w.fire_of(TimerFire("y", "y@2")),
            w.fire_of(TimerFire("y", "y@2")),
        ]
        if same_flush:
            out = await asyncio.gather(*(core.handle(c) for c in cmds))
        else:
            out = [await core.handle(c) for c in cmds]
        assert out[:3] == ["o2", None, None] and sorted(out[3:], key=str) in (
            [None, "rang o2/y"],
            ["rang o2/y", "rang o2/y"],
        )
        await w.fire_everything()
        assert await w.rings() == Counter({("o2", "y"): 1})
        await w.restart()
        assert await check_agreement(w) == {}

    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_a_recurring_timer_rescheduled_by_its_own_fire_runs_once_per_round(agg) -> None:
    """Ring(again=10) re-schedules its own name from its fire (new id, same name, in the
    event that journals the fire); each round's fire delivered four times (twice in one
    flush, once more later, once after a restart) rings once per round."""

    async def main():
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("r", 0),), again=10))
        tids = []
        for _ in range(3):
            tid = (await check_agreement(w))["r"]
            tids.append(tid)
            w.clock.now += timedelta(seconds=10)  # this round's timer is due (not early)
            core = w.core()
            f = w.fire_of(TimerFire("r", tid))
            await asyncio.gather(core.handle(f), core.handle(f))
            await core.handle(f)
            await w.restart()
            await w.core().handle(f)
        assert len(set(tids)) == 3
        assert await w.rings() == Counter({("o", "r"): 3})
        assert len(await w.events()) == 4

    asyncio.run(main())


@pytest.mark.parametrize("agg", [ALARM, NO_KEYS], ids=["keys", "no-keys"])
def test_a_fire_whose_write_times_out_and_lands_late_is_applied_once(agg) -> None:
    """The fire's own write times out (the activation stops) and lands only after the
    pump's retry reached a fresh activation, which runs the timer again and writes the same
    sequence number: one of the two is fenced; Rang is stored once."""

    async def main():
        gate = asyncio.Event()
        w = World(agg, faults=[timeout(nth=2, land=gate)])
        await w.core().handle(Arm("o", timers=(("a", 1),)))
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        await pump.run_once()
        await pump.drain()  # the fire's write timed out: unknown, the row stays
        assert [r.timer_id for r in w.store.rows()] == ["a@1"]
        await asyncio.sleep(0.002)
        racer = asyncio.ensure_future(pump.run_once())  # the retry, on a fresh activation
        await asyncio.sleep(0)
        gate.set()  # and the first write lands meanwhile
        await racer
        await pump.drain()
        await w.fire_everything()
        await w.restart()
        assert await w.rings() == Counter({("o", "a"): 1})
        assert await check_agreement(w) == {} and w.store.rows() == []

    asyncio.run(main())


def test_a_fire_reaching_a_stale_activation_is_not_answered_as_stale() -> None:
    """Split brain during a handoff: activation A recovered at #1; a newer activation B then
    schedules x (x@2, indexed). The pump's fire of x@2 reaches A, which has never seen #2.
    A must not answer "stale" (the pump would delete the row: x pending, never fired); it
    says it is behind (not answered, the row stays) and stops, and the fire then runs on a
    fresh activation, once."""

    async def main():
        w = World()
        await w.core().handle(Arm("o1"))  # A, at #1
        stale = w.core()
        newer = EntityCore(
            ALARM,
            "e1",
            w.journal,
            w.snaps,
            w.ser,
            writer_id="B",
            wall_clock=w.clock,
            timer_store=w.store,
        )
        await newer.handle(Arm("o2", timers=(("x", 1),)))  # x@2, indexed
        await newer.stop()
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        await pump.run_once()  # the fire goes to A (w.core() is still A)
        await pump.drain()
        assert stale.stopped and stale.stats.stale_fires == 0
        assert [r.timer_id for r in w.store.rows()] == ["x@2"]
        await asyncio.sleep(0.002)
        await pump.run_once()  # now a fresh activation
        await pump.drain()
        assert await w.rings() == Counter({("o2", "x"): 1}) and w.store.rows() == []

    asyncio.run(main())


def test_a_fire_of_an_id_the_journal_never_had_is_stale_and_stops_nothing() -> None:
    """The other side of the check above: a row whose id is beyond the journal (a journal
    reset under an old index, a forged fire) is answered stale and deleted; the activation
    is not stopped again and again."""

    async def main():
        w = World()
        core = w.core()
        await core.handle(Arm("o1"))
        assert await core.handle(w.fire_of(TimerFire("x", "x@99"))) is None
        assert not core.stopped and core.stats.stale_fires == 1
        assert await core.handle(Poke("p")) == "p"

    asyncio.run(main())


@pytest.mark.parametrize("later_event", [False, True], ids=["newest-group", "older-group"])
def test_a_fire_that_writes_nothing_stays_fired_after_a_restart(later_event) -> None:
    """A timer whose command writes nothing (a no-op) fired once. After a restart it came
    back: pending again and re-indexed (its schedule being the newest group), so the command
    ran a second time; or pending with no index row forever (a later event). It must stay
    fired: not pending, no row, not run again."""

    async def main():
        w = World(_scheduling(Ring("p", "x", quiet=True), after=1))
        await w.core().handle(Poke("p"))  # schedules x, whose command is a no-op
        w.clock.now += timedelta(seconds=5)
        pump = w.pump()
        real_send = w.send

        async def send(type_name, pid, fires):  # the row goes once answered: the snapshot
            out = await real_send(type_name, pid, fires)  # must be there by then
            assert await w.snaps.load(pid) is not None
            return out

        pump.send = send
        await pump.run_once()
        await pump.drain()
        assert w.core().stats.timers_fired == 1 and w.store.rows() == []
        if later_event:
            await w.core().handle(Arm("later"))
        await w.restart()
        core = w.core()
        await core.start()
        assert list(core.timers.pending) == [] and w.store.rows() == []
        await pump.run_once()
        await pump.drain()
        assert core.stats.timers_fired == 0

    asyncio.run(main())


# --------------------------------------- 3. replay and snapshots restore exactly the pending timers


SNAP_EVERY = [1, 2, 3]


SCRIPT = [
    Arm("s1", timers=(("a", 50), ("b", 60))),
    Poke("p1"),
    Arm("s2", timers=(("c", 70), ("a", 80)), cancel=("b",)),
    Poke("p2"),
    Arm("s3", cancel=("c",)),
    Arm("s4", timers=(("d", 90),)),
]


@pytest.mark.parametrize("every", SNAP_EVERY)
def test_replay_from_any_snapshot_restores_exactly_the_pending_timers(every) -> None:
    """Snapshots every N events; after every command a restart (from the newest snapshot, from
    an undecodable newest one, and from the journal alone) restores the same table."""

    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=every, keep=3))
        w = World(agg)
        for cmd in SCRIPT:
            await w.core().handle(cmd)
            await w.restart()
            want = await check_agreement(w)
            await w.restart()
            newest = await w.snaps.load(agg.persistence_id("e1"))
            if newest is not None:  # the newest snapshot cannot be decoded: an older one
                await w.snaps.save(dataclasses.replace(newest, payload=b"\x00garbage"))
                assert await check_agreement(w) == want
                await w.restart()
                await w.snaps.save(newest)
        assert want == {"a": "a@3", "d": "d@6"}
        await w.fire_everything()
        assert await w.rings() == Counter({("s2", "a"): 1, ("s4", "d"): 1})

    asyncio.run(main())


def test_a_snapshot_newer_than_the_journal_is_ignored_with_its_timers() -> None:
    """A snapshot claims #50 (with a pending timer "ghost") but the journal ends at #2:
    the full replay must not keep the snapshot's timers."""

    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=1, keep=1))
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("ghost", 10),)))
        await w.core().handle(Arm("o2", cancel=("ghost",), timers=(("real", 10),)))
        await w.restart()
        snap = await w.snaps.load(agg.persistence_id("e1"))
        core = w.core()
        await core.start()
        ser_id, manifest, payload = core.keys.wrap_snapshot(
            *w.ser.encode(AlarmState(("armed:o",))),
            timers=[["ghost", "ghost@1", T0.timestamp() * 1000, 0, "x"]],
        )
        await w.restart()
        await w.snaps.save(
            dataclasses.replace(
                snap, sequence_nr=50, payload=payload, manifest=manifest, serializer_id=ser_id
            )
        )
        assert await check_agreement(w) == {"real": "real@2"}

    asyncio.run(main())


def test_a_snapshot_whose_timer_list_is_corrupt_falls_back_like_an_undecodable_one() -> None:
    """The envelope decodes but its timer entries do not (wrong arity): recovery must fall
    back to an older snapshot / the journal, as for an undecodable state, not die."""

    async def main():
        agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=1, keep=2))
        w = World(agg)
        await w.core().handle(Arm("o", timers=(("a", 10),)))
        core = w.core()
        snap = await w.snaps.load(agg.persistence_id("e1"))
        ser_id, manifest, payload = core.keys.wrap_snapshot(
            *w.ser.encode(core.state), timers=[["a", "a@1"]]
        )  # two of five fields
        await w.restart()
        await w.snaps.save(
            dataclasses.replace(snap, payload=payload, manifest=manifest, serializer_id=ser_id)
        )
        assert await check_agreement(w) == {"a": "a@1"}
        assert w.core().recovery.snapshots_skipped == 1

    asyncio.run(main())
