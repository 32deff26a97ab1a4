"""The read side's live path on real Ray and a real Cassandra node.

Writers are a raysource ``System`` (hosted host actors on the Cassandra store): after each
acknowledged append a host offers the events to the projection workers of their tag
(``raysource.runtime.actors.live``); the worker applies them at once (``raysource.readside.live``)
while the tag query, the source of truth, sees them only after the journal's visibility delay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import time
import uuid
from collections import Counter

import cloudpickle
import pytest
import ray
import ray.cloudpickle as ray_cloudpickle
from readside_idle import until_caught_up

from raysource.examples.reservations_view import VIEW_TABLE, reservations_projection
from raysource.examples.seats import SHOW, CancelReservation, GetShow, ReserveSeat
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import JournalUnavailableError
from raysource.readside.offsets import CassandraOffsetStore
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionHandler, ProjectionSettings, ProjectionSpec
from raysource.readside.verify import tag_events, verify_cassandra
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = ProjectionSettings(
    poll_interval=0.1,
    commit_every=10,
    commit_interval=0.3,
    retry_attempts=3,
    retry_backoff=0.05,
    retry_backoff_max=0.2,
)


def config_with(contact, keyspace, delay: float) -> CassandraConfig:
    return CassandraConfig.from_contact(
        contact, keyspace=keyspace, eventual_consistency_delay=delay
    )


async def until(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def start_system(config: CassandraConfig, agg) -> System:
    return System.start(
        f"live{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[agg],
        placement={agg.name: "hosted"},
    )


async def activate(system: System, agg, shows) -> None:
    """Open the hosts of ``shows`` (read-only asks), again while Cassandra is too busy to
    take a new session (a not-applied error on a machine shared with other test runs)."""
    for attempt in range(5):
        try:
            await asyncio.gather(*(system.entity(agg, s).ask_async(GetShow()) for s in shows))
            return
        except JournalUnavailableError:
            if attempt == 4:
                raise
            await asyncio.sleep(2.0)


async def applied_counts(session, keyspace: str) -> Counter:
    rows = await session.select_all(
        f"SELECT persistence_id, sequence_nr FROM {keyspace}.{VIEW_TABLE}_applied",
        profile=RAW_PROFILE,
    )
    return Counter((r[0], r[1]) for r in rows)


async def test_live_path_applies_events_before_the_durable_query_sees_them(
    cassandra_contact, cassandra_keyspace, ray_local
):
    # a 30 s visibility delay: within the test the tag query cannot see any of these events
    config = config_with(cassandra_contact, cassandra_keyspace, 30.0)
    agg = dataclasses.replace(SHOW, number_of_shards=2)
    spec = reservations_projection("live-first", settings=FAST, audit=True)
    control = Projections(config)
    system = start_system(config, agg)
    try:
        await control.start(spec)
        shows = [f"lf{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        await activate(system, agg, shows)
        await asyncio.sleep(1.0)  # the hosts list the worker as a subscriber
        started = time.monotonic()
        for show in shows:
            ref = system.entity(agg, show)
            for seat, who in (("A1", "ann"), ("A2", "ben"), ("A3", "ann")):
                await ref.ask_async(ReserveSeat(seat, who))
            await ref.ask_async(CancelReservation("A2", "ben"))
        expected = {(SHOW.persistence_id(s), n) for s in shows for n in range(1, 5)}
        async with CassandraSession(config) as session:

            async def all_applied():
                return expected <= set(await applied_counts(session, config.keyspace))

            await until(all_applied, 20, "the view rows through the live path")
            took = time.monotonic() - started
            assert took < config.eventual_consistency_delay, took
            journal = CassandraJournal(session, config)
            assert [te async for te in journal.events_by_tag("show")] == [], (
                "the tag query does not see them yet"
            )
            counts = await applied_counts(session, config.keyspace)
            assert set(counts) == expected and max(counts.values()) == 1
            rows = await session.select_all(
                f"SELECT customer, show, seat FROM {config.keyspace}.{VIEW_TABLE}",
                profile=RAW_PROFILE,
            )
            assert {tuple(r) for r in rows} == {
                (c, s, seat) for s in shows for c, seat in (("ann", "A1"), ("ann", "A3"))
            }
            (st,) = await control.status(spec.name)
            assert st["live"]["applied"] == len(expected) and st["live"]["gaps"] == 0
            stored = await CassandraOffsetStore(session, config.keyspace).load(spec.name, "0/1")
            assert stored.offset is None, "the offset moves only past what the tag query saw"
    finally:
        if control.handles(spec.name):
            await control.stop(spec.name)
        system.shutdown()


@pytest.mark.slow
async def test_kill_and_restart_mid_stream_with_the_live_path_then_verify(
    cassandra_contact, cassandra_keyspace, ray_local, capsys
):
    # its own keyspace: verify reads the whole "show" tag and the whole view
    config = config_with(cassandra_contact, f"{cassandra_keyspace}_kill", 1.0)
    agg = dataclasses.replace(SHOW, number_of_shards=2)
    spec = live_kill_spec()  # two slices: slice 0 reads the tag and feeds slice 1
    control = Projections(config)
    system = start_system(config, agg)
    shows = [f"lk{i}-{uuid.uuid4().hex[:4]}" for i in range(8)]
    try:
        await control.start(spec)
        await activate(system, agg, shows)
        await asyncio.sleep(1.0)
        rng = random.Random(3)
        stop_at = time.monotonic() + 8.0
        holders: dict[tuple[str, str], str] = {}

        async def writer(show: str) -> int:
            ref, n = system.entity(agg, show), 0
            while time.monotonic() < stop_at:
                seat = f"A{rng.randint(1, 5)}"
                who = holders.get((show, seat))
                if who:
                    await ref.ask_async(CancelReservation(seat, who))
                    del holders[(show, seat)]
                else:
                    who = rng.choice(["ann", "ben", "cy"])
                    await ref.ask_async(ReserveSeat(seat, who))
                    holders[(show, seat)] = who
                n += 1
                await asyncio.sleep(rng.uniform(0, 0.02))
            return n

        live_before_restart = []

        async def disrupt():
            await asyncio.sleep(2.0)
            live_before_restart.append(
                sum(st["live"]["applied"] for st in await control.status(spec.name))
            )
            await control.stop(spec.name)  # restart mid-stream
            await asyncio.sleep(0.5)
            await control.start(spec)
            await asyncio.sleep(1.5)
            # crashes: Ray re-creates each worker, it resumes by itself
            ray.kill(control.handles(spec.name)["1/2"], no_restart=False)  # the follower
            await asyncio.sleep(1.0)
            ray.kill(control.handles(spec.name)["0/2"], no_restart=False)  # the reader

        written, _ = await asyncio.gather(asyncio.gather(*(writer(s) for s in shows)), disrupt())
        written_at = time.time()
        total = sum(written)
        expected = {
            (SHOW.persistence_id(s), n)
            for s in shows
            for n in range(1, 1 + written[shows.index(s)])
        }
        assert len(expected) == total > 200
        async with CassandraSession(config) as session:

            async def all_applied():
                return expected <= set(await applied_counts(session, config.keyspace))

            await until(all_applied, 40, "every event applied", interval=0.3)
            # no stray redelivery can follow: every write visible, every worker at the end
            await until_caught_up(control, spec.name, written_at, config.eventual_consistency_delay)
            counts = await applied_counts(session, config.keyspace)
            assert set(counts) == expected, "0 missed, nothing foreign"
            assert max(counts.values()) == 1, "0 applied twice"
            assert live_before_restart[0] > 0, "the live path carried part of the stream"
            statuses = await control.status(spec.name)
            assert [st["role"] for st in statuses] == ["reader", "follower"]
            assert statuses[1]["tag_rows_read"] == 0

            # verify proves it complete against the journal ...
            report = await verify_cassandra(spec, config)
            assert report.ok and report.events == total, report.lines()
            # ... and finds a deliberately removed view row
            customer, show, seat = next((c, s, seat) for (s, seat), c in holders.items())
            await session.execute(
                f"DELETE FROM {config.keyspace}.{VIEW_TABLE} WHERE customer = ? AND show = ? "
                "AND seat = ?",
                (customer, show, seat),
            )
            report = await verify_cassandra(spec, config)
            assert report.problems == [f"missing row {(customer, show, seat)}"]
            # ... and an event whose watermark was rolled back (never applied, as far as the
            # view knows)
            pid = SHOW.persistence_id(show)
            last = max(n for p, n in expected if p == pid)
            await session.execute(
                f"UPDATE {config.keyspace}.{VIEW_TABLE}_watermarks SET "
                "sequence_nr = ? WHERE persistence_id = ?",
                (last - 1, pid),
            )
            report = await verify_cassandra(spec, config)
            assert f"not applied: {pid} #{last} (watermark {last - 1})" in report.problems
            events = await tag_events(CassandraJournal(session, config), spec)
            assert {(e.persistence_id, e.sequence_nr) for e in events} == expected

        from raysource.cli.main import main

        args = [
            "--cassandra",
            f"{config.contact_points[0]}:{config.port}",
            "--keyspace",
            config.keyspace,
            "--spec",
            f"{__name__}:live_kill_spec",
        ]
        # (the CLI runs its own event loop: in a thread)
        assert await asyncio.to_thread(main, ["projection", "verify", "live-kill", *args]) == 1
        out = capsys.readouterr().out
        assert (
            "INCOMPLETE: 2 problem(s)" in out
            and f"missing row {(customer, show, seat)}" in out
            and f"not applied: {pid} #{last}" in out
        )
    finally:
        if control.handles(spec.name):
            await control.stop(spec.name)
        system.shutdown()
        async with CassandraSession(config) as session:
            await session.execute(
                f"DROP KEYSPACE IF EXISTS {config.keyspace}", prepare=False, timeout=60.0
            )


def live_kill_spec() -> ProjectionSpec:
    return reservations_projection("live-kill", settings=FAST, audit=True, n_slices=2)


class _Collect(ProjectionHandler):
    """Non-idempotent: records every delivery, so a double delivery shows."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def handle(self, env) -> None:
        self.got.append((env.persistence_id, env.sequence_nr))


async def test_a_dropped_live_message_is_filled_by_the_durable_path(
    cassandra_contact, cassandra_keyspace
):
    from raysource.readside.worker import ProjectionWorker
    from raysource.snapshots.memory import InMemorySnapshotStore
    from raysource.testing.testkit import AggregateTestKit

    config = config_with(cassandra_contact, cassandra_keyspace, 2.0)
    tag = f"dr{uuid.uuid4().hex[:6]}"
    agg = dataclasses.replace(SHOW, name=f"show{tag}", tagger=_TagAs(tag))
    handler = _Collect()
    spec = ProjectionSpec(f"drop-{tag}", tag, lambda s, c: handler, (agg,), 1, FAST)
    journal = await CassandraJournal.connect(config, create_schema=True)
    async with CassandraSession(config) as session:
        worker = ProjectionWorker(spec, 0, session, config, journal)
        await worker.global_prepare()
        await worker.boot()
        await worker.start()
        kit = AggregateTestKit(
            agg,
            entity_id="d",
            journal=journal,
            snapshot_store=InMemorySnapshotStore(),
            roundtrip=False,
        )
        try:
            for i, who in enumerate(["a", "b", "c", "d", "e"]):
                assert (await kit.arun(ReserveSeat(f"A{i + 1}", who))).ok
            written, written_wall = time.monotonic(), time.time()
            pid = agg.persistence_id("d")
            stored = [e async for e in journal.replay(pid)]
            assert [e.sequence_nr for e in stored] == [1, 2, 3, 4, 5]
            worker.offer([stored[0], stored[1]])
            worker.offer([stored[3]])  # #3 was dropped on the way, and #5 is never offered

            async def first_four():
                return handler.got == [(pid, n) for n in range(1, 5)]

            await until(first_four, 1.5, "the live events, #3 read back from the journal")
            assert time.monotonic() - written < config.eventual_consistency_delay
            st = await worker.status()
            counters = ("offered", "applied", "backfilled", "duplicates", "gaps", "dropped")
            assert {k: st["live"][k] for k in counters} == {
                "offered": 3,
                "applied": 4,
                "backfilled": 1,
                "duplicates": 0,
                "gaps": 0,
                "dropped": 0,
            }
            assert st["offset"] == "start", "nothing confirmed by the tag query yet"

            async def all_five():
                return len(handler.got) >= 5

            await until(all_five, 10, "the durable path to deliver the dropped #5")

            class _One:  # until_caught_up over this one worker
                async def status(self, _name: str) -> list:
                    return [await worker.status()]

            # every write visible and the worker at the journal's end: nothing is left that
            # the tag stream could still deliver
            await until_caught_up(
                _One(), spec.name, written_wall, config.eventual_consistency_delay
            )
            assert handler.got == [(pid, n) for n in range(1, 6)], "in order, each exactly once"
            st = await worker.status()
            assert st["duplicates_skipped"] == 4 and st["offset"] != "start"
            worker.offer([stored[4]])  # a late duplicate of the live path

            judged = ("duplicates", "applied", "dropped", "gaps")

            async def offer_handled():  # the live loop took it and judged it
                live = (await worker.status())["live"]
                return sum(live[k] for k in judged) > sum(st["live"][k] for k in judged)

            await until(offer_handled, 10, "the late duplicate to be judged")
            assert len(handler.got) == 5
        finally:
            await worker.stop()
            await kit.aclose()
    await journal.close()


@dataclasses.dataclass(frozen=True)
class _TagAs:
    tag: str

    def __call__(self, event: object) -> frozenset[str]:
        return frozenset({self.tag})
