"""Issue 29: a projection version rebuilt beside the live one, switched with no downtime, and
the event log read as a Ray Dataset (real Ray, real Cassandra).

* ``test_rebuild_while_commands_arrive``: version 2 of the reservations view is deployed
  (bulk backfill with Ray Data, one backfill task killed mid-run and retried), a switch while
  it is behind is refused, the switch goes through, rollback and switch again move every
  reader, version 1 is dropped; a reader queries through the alias the whole time and never
  sees an empty or partial answer; version 2 verifies with 0 missed and 0 applied twice.
* ``test_read_events_matches_the_journal_at_a_cut``: ``read_events`` on a tag, while events
  keep being written, reads the cut once (planning) and splits it among its read tasks, which
  never read the tag; their union has every event up to the cut of every aggregate (as
  ``raysource events`` lists them, in order per aggregate, none twice, each aggregate in one
  task) and none after it; every other event is after the cut (never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
import ray
import ray.cloudpickle as ray_cloudpickle
from readside_idle import until_caught_up

from raysource.data import ProjectionView, read_events, write_view
from raysource.data.backfill import deploy
from raysource.data.source import stable_cut
from raysource.examples.reservations_view import (
    ReservationsByCustomer,
    reservations_of,
    reservations_projection,
    view_table,
)
from raysource.examples.seats import SHOW, CancelReservation, ReserveSeat, seat_label
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.readside.errors import ProjectionError, SwitchRefusedError
from raysource.readside.projection_actor import Projections
from raysource.readside.projections import ProjectionSettings, ProjectionSpec, offset_from_str
from raysource.readside.verify import tag_events, verify_cassandra
from raysource.readside.versions import VersionControl, live_version
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.testkit import AggregateTestKit

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

DELAY = 0.5
FAST = ProjectionSettings(
    poll_interval=0.1, commit_every=10, commit_interval=0.3, retry_backoff=0.05, batch_size=40
)
BASE = "reservations-by-customer"
SHOWS = [f"r{i}" for i in range(6)]
STABLE = {f"stable{i}": [(s, seat_label(i)) for s in SHOWS[:3]] for i in range(4)}


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    return CassandraConfig.from_contact(
        cassandra_contact, keyspace=cassandra_keyspace, eventual_consistency_delay=DELAY
    )


class _Effects(ReservationsByCustomer):
    """The view with a declared side effect: a row in ``effects_log`` per run (the "email")."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log = self.table.rsplit(".", 1)[0] + ".effects_log"
        self.version = kwargs.get("version", 1)

    async def global_prepare(self) -> None:
        await super().global_prepare()
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.log} (pid text, seq bigint, version int, "
            "at timeuuid, PRIMARY KEY ((pid), seq, at))",
            prepare=False,
            timeout=60.0,
        )

    async def side_effect(self, envelope) -> None:
        await self.session.execute(
            f"INSERT INTO {self.log} (pid, seq, version, at) VALUES (?, ?, ?, now())",
            (envelope.persistence_id, envelope.sequence_nr, self.version),
        )


class _KillOnce(_Effects):
    """Version 2's handler: in a Ray Data task (not a projection actor), the process dies
    after its second batch, once per test run (a marker file)."""

    def __init__(self, marker: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marker, self.batches = marker, 0

    async def handle_batch(self, envelopes) -> None:
        await super().handle_batch(envelopes)
        self.batches += 1
        in_task = ray.get_runtime_context().get_actor_id() is None
        if in_task and self.batches == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            os._exit(1)


@dataclass(frozen=True)
class _Factory:
    marker: str
    version: int

    def __call__(self, session, config):
        if self.version == 2:
            return _KillOnce(self.marker, session, config.keyspace, audit=True, version=2)
        return _Effects(session, config.keyspace, audit=True, version=self.version)


@dataclass(frozen=True)
class Build:
    """The test's spec builder: audited versions; version 2's backfill dies once."""

    marker: str

    def __call__(self, version: int) -> ProjectionSpec:
        spec = reservations_projection(BASE, version=version, settings=FAST, audit=True)
        return dataclasses.replace(spec, handler_factory=_Factory(self.marker, version))


def kit(journal, show: str) -> AggregateTestKit:
    return AggregateTestKit(
        SHOW,
        entity_id=show,
        journal=journal,
        snapshot_store=InMemorySnapshotStore(),
        roundtrip=False,
    )


async def _table(session, config, version: int) -> set[tuple]:
    rows = await session.select_all(
        f"SELECT customer, show, seat FROM {config.keyspace}.{view_table(version)}",
        profile=RAW_PROFILE,
    )
    return {tuple(r) for r in rows}


async def test_rebuild_while_commands_arrive(config, ray_local, tmp_path) -> None:
    build = Build(str(tmp_path / "killed"))
    journal = await CassandraJournal.connect(config, create_schema=True)
    kits = {s: kit(journal, s) for s in SHOWS}
    for customer, seats in STABLE.items():
        for show, seat in seats:
            await kits[show].arun(ReserveSeat(seat, customer))
    rng = random.Random(29)
    held: dict[tuple[str, str], str] = {}

    async def command() -> None:
        show = rng.choice(SHOWS)
        seat = seat_label(rng.randrange(20, 60))
        if (show, seat) in held:
            await kits[show].arun(CancelReservation(seat, held.pop((show, seat))))
        else:
            customer = f"c{rng.randrange(8)}"
            await kits[show].arun(ReserveSeat(seat, customer))
            held[(show, seat)] = customer

    for _ in range(150):  # history before version 2 exists
        await command()
    control = Projections(config)
    versions = VersionControl(config)
    v1, v2 = build(1), build(2)
    await control.start(v1)
    await until_caught_up(control, v1.name, time.time(), DELAY)

    stop = asyncio.Event()
    bad: list[str] = []
    reads = {1: 0, 2: 0}
    written = 0

    async def load() -> None:
        nonlocal written
        while not stop.is_set():
            await command()
            written += 1
            await asyncio.sleep(0.01)

    async def reader() -> None:
        async with CassandraSession(config) as session:
            while not stop.is_set():
                version = await live_version(session, config.keyspace, BASE)
                for customer, seats in STABLE.items():
                    got = await reservations_of(session, config.keyspace, customer)
                    if got != sorted(seats):
                        bad.append(f"{customer} read {got} (alias at {version})")
                reads[version] = reads.get(version, 0) + 1
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(load()), asyncio.create_task(reader())]
    try:
        with pytest.raises(SwitchRefusedError, match="not deployed"):
            await versions.switch(BASE, 2, build)
        done = await deploy(config, BASE, 2, build, workers=2, tasks=4)
        assert done.events >= 150 and Path(build.marker).exists()  # a task died, was retried
        assert await versions.alias(BASE) == versions_alias(1, None)

        await control.pause(v2.name)  # version 2 falls behind while commands arrive

        async def v1_ahead() -> bool:
            hw1 = max(offset_from_str(s["offset"]) for s in await control.status(v1.name))
            return hw1 > max(offset_from_str(s["offset"]) for s in await control.status(v2.name))

        await _until(v1_ahead, "version 1 to move past the paused version 2")
        with pytest.raises(SwitchRefusedError, match="version 2 is behind version 1"):
            await versions.switch(BASE, 2, build)
        assert (await versions.alias(BASE)).live == 1
        await control.resume(v2.name)
        async with CassandraSession(config) as session:  # a row no event explains
            bogus = f"INSERT INTO {config.keyspace}.{view_table(2)} (customer, show, seat) "
            await session.execute(bogus + "VALUES ('ghost', 'r0', 'Z1')")
            with pytest.raises(SwitchRefusedError, match="does not verify.*unexpected row"):
                await versions.switch(BASE, 2, build, wait=120)
            assert (await versions.alias(BASE)).live == 1
            await session.execute(
                f"DELETE FROM {config.keyspace}.{view_table(2)} WHERE customer = 'ghost'"
            )
            assert await _effects_by(session, config, 2) == 0  # held back while not live
        line = await versions.switch(BASE, 2, build, wait=120)
        assert "version 2 is live" in line
        assert (await versions.alias(BASE)).live == 2
        while reads.get(2, 0) < 3:  # the reader reads version 2 now
            await asyncio.sleep(0.05)

        async with CassandraSession(config) as session:  # a row only version 2 has
            await session.execute(
                f"INSERT INTO {config.keyspace}.{view_table(2)} (customer, show, seat) "
                "VALUES ('probe', 'x', 'Z9')"
            )
            assert await reservations_of(session, config.keyspace, "probe") == [("x", "Z9")]
            assert "rolled back to version 1" in await versions.rollback(BASE, build, wait=120)
            assert await reservations_of(session, config.keyspace, "probe") == []
            await session.execute(
                f"DELETE FROM {config.keyspace}.{view_table(2)} WHERE customer = 'probe'"
            )
        with pytest.raises(ProjectionError, match="no previous version|is live"):
            await versions.drop(BASE, 1, build)
        await versions.switch(BASE, 2, build, wait=120)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not bad, bad[:5]
    assert reads[1] > 0 and reads[2] > 0 and written > 20

    await until_caught_up(control, v2.name, time.time(), DELAY)
    await until_caught_up(control, v1.name, time.time(), DELAY)
    report = await verify_cassandra(v2, config)  # every event applied exactly once
    assert report.ok, report.lines()
    async with CassandraSession(config) as session:
        assert await _table(session, config, 2) == await _table(session, config, 1)
        # every event's side effect ran exactly once, by whichever version was live
        runs = await session.select_all(
            f"SELECT pid, seq FROM {config.keyspace}.effects_log", profile=RAW_PROFILE
        )
        ran = Counter((r[0], r[1]) for r in runs)
        events = await tag_events(journal, v2)
        assert len(events) > 300 and all(
            ran[(e.persistence_id, e.sequence_nr)] == 1 for e in events
        ), [k for k, n in ran.items() if n != 1][:5]
        assert len(ran) == len(events) and await _effects_by(session, config, 2) > 0
    assert "version 1 dropped" in await versions.drop(BASE, 1, build)
    assert not control.handles(v1.name)
    async with CassandraSession(config) as session:
        for customer, seats in STABLE.items():
            assert await reservations_of(session, config.keyspace, customer) == sorted(seats)
        with pytest.raises(Exception, match=view_table(1)):
            await _table(session, config, 1)
    await control.stop(v2.name)
    await journal.close()


async def _effects_by(session, config, version: int) -> int:
    rows = await session.select_all(
        f"SELECT version FROM {config.keyspace}.effects_log", profile=RAW_PROFILE
    )
    return sum(1 for r in rows if r[0] == version)


def versions_alias(live, previous):
    from raysource.readside.versions import Alias

    return Alias(live, previous)


async def _until(pred, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_read_events_matches_the_journal_at_a_cut(config, ray_local, monkeypatch) -> None:
    import pyarrow as pa

    import raysource.data.source as source_module
    from raysource.data.source import EventLogSource
    from raysource.ops import inspect as ins

    tag_type = dataclasses.replace(SHOW, name=f"rd{uuid.uuid4().hex[:6]}", tagger=_Tag("rd"))
    journal = await CassandraJournal.connect(config, create_schema=True)
    ids = [f"e{i}" for i in range(12)]
    kits = {
        i: AggregateTestKit(
            tag_type,
            entity_id=i,
            journal=journal,
            snapshot_store=InMemorySnapshotStore(),
            roundtrip=False,
        )
        for i in ids
    }
    for n in range(96):  # seats A1.. of 100
        assert (await kits[ids[n % len(ids)]].arun(ReserveSeat(seat_label(n), f"c{n}"))).events
    await asyncio.sleep(DELAY * 2)
    stop = asyncio.Event()
    during = 0

    async def writer() -> None:  # events written while the cut is read and the tasks read
        nonlocal during
        n, late = 0, seat_label(99)
        while not stop.is_set():
            taken = (n // len(ids)) % 2 == 1
            command = CancelReservation(late, "late") if taken else ReserveSeat(late, "late")
            result = await kits[ids[n % len(ids)]].arun(command)
            assert result.events, result
            n, during = n + 1, during + 1
            await asyncio.sleep(0.005)

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(writer())
    try:
        while during < 5:
            await asyncio.sleep(0.05)
        cut = stable_cut(config)
        # the cut is read once (planning, here), the read tasks never read the tag
        cut_reads = []
        read_cut = source_module.read_cut

        async def counted(*args, **kwargs):
            cut_reads.append(args)
            return await read_cut(*args, **kwargs)

        monkeypatch.setattr(source_module, "read_cut", counted)
        source = EventLogSource(config, "rd", [tag_type], until=cut, slices=3)
        read_tasks = await loop.run_in_executor(None, source.get_read_tasks, 1)
        assert len(read_tasks) == 3 and len(cut_reads) == 1
        for t in read_tasks:  # a task carries its own part, not every part; Ray Data names it
            assert t.read_fn.source._parts is None and t.read_fn.__name__.startswith("read_")

        def no_tag_reads(*args, **kwargs):
            raise AssertionError("a read task read the tag")

        monkeypatch.setattr(CassandraJournal, "events_by_tag", no_tag_reads)

        def run_tasks() -> list[list[tuple[str, int, int]]]:
            out = []
            for t in read_tasks:
                blocks = [b for b in t() if b.num_rows]
                rows = pa.concat_tables(blocks).to_pylist() if blocks else []
                out.append([(r["persistence_id"], r["sequence_nr"], r["offset_us"]) for r in rows])
            return out

        per_task = await loop.run_in_executor(None, run_tasks)
        monkeypatch.undo()
        # through Ray Data, split by slice and time range
        ds = read_events(config, "rd", [tag_type], until=cut, slices=3, time_ranges=2)
        table = await loop.run_in_executor(None, ds.to_pandas)
        await asyncio.sleep(DELAY * 2)
    finally:
        stop.set()
        await task
    await asyncio.sleep(DELAY * 2)
    assert len(table) > 0 and (table["offset_us"] <= cut.timestamp_us).all()
    tasks_rows = [r for rows in per_task for r in rows]
    assert all(off <= cut.timestamp_us for _, _, off in tasks_rows)
    pids_of = [{pid for pid, _, _ in rows} for rows in per_task]
    assert sum(len(p) for p in pids_of) == len(set().union(*pids_of)) == len(ids)  # split
    union = [(pid, seq) for pid, seq, _ in tasks_rows]
    assert len(union) == len(set(union)), "an event read twice"
    ray_rows = list(zip(table["persistence_id"], table["sequence_nr"], strict=True))
    assert len(ray_rows) == len(set(ray_rows)) and set(ray_rows) == set(union)
    # a view write refuses a dataset whose read tasks reach it reordered (never out of order)
    spec = reservations_projection(f"rd-view-{uuid.uuid4().hex[:4]}", version=7)
    spec = dataclasses.replace(spec, tag="rd", aggregate_types=(tag_type,))
    async with CassandraSession(config) as session:
        await spec.handler_factory(session, config).global_prepare()
    shuffled = read_events(config, "rd", [tag_type], until=cut).random_shuffle(seed=3)
    with pytest.raises(Exception, match="split or reordered"):
        await loop.run_in_executor(None, write_view, shuffled, ProjectionView(spec, config))
    assert set(table.columns) >= {"persistence_id", "sequence_nr", "seat", "customer"}
    got: dict[str, list[tuple[int, str]]] = {}
    for row in table.sort_values(["persistence_id", "sequence_nr"]).itertuples():
        got.setdefault(row.persistence_id, []).append((row.sequence_nr, row.seat))
    after: dict[str, list[int]] = {}
    async with contextlib.aclosing(journal.events_by_tag("rd", cut)) as rows:
        async for te in rows:
            after.setdefault(te.event.persistence_id, []).append(te.event.sequence_nr)
    assert sum(len(v) for v in after.values()) > 0  # some were written after the cut
    for i in ids:  # every aggregate, as `raysource events` lists it
        pid = tag_type.persistence_id(i)
        logged = [
            (e.sequence_nr, e.event.seat)
            async for e in ins.event_log(journal, None, tag_type, i, 1, None)
        ]
        mine = got.get(pid, [])
        assert mine == logged[: len(mine)], pid  # same events, same order, a prefix
        assert [s for p, s in union if p == pid] == [s for s, _ in mine], pid  # in order
        rest = [seq for seq, _ in logged[len(mine) :]]
        assert sorted(set(after.get(pid, []))) == rest, pid  # the rest after the cut: none lost
        assert not set(after.get(pid, [])) & {s for s, _ in mine}, pid  # none twice
    await journal.close()


@dataclass(frozen=True)
class _Tag:
    tag: str

    def __call__(self, event: object) -> frozenset[str]:
        return frozenset({self.tag})
