"""Durable timers on a real multi-node Ray cluster with real Cassandra (issue 17): a timer
fires into a passivated aggregate; a cancelled one never fires; the timers of a lost node's
shards fire from their new home; 10,000 timers due at the same moment are each applied
exactly once, with their lateness measured by the timer services.

One cluster per module (head + 2 workers, 1 CPU each, fast health checks). Every check
reads the journal: what fired is what the journal holds, once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import ray
from ray_cluster import ray_cluster

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType, persist, reply, schedule
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec
from raysource.sharding.coordinator import CoordinatorSettings
from raysource.sharding.system import System
from raysource.sharding.timer_pump import TimerSettings

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class Arm:
    count: int
    after: float = 0.0
    at: datetime | None = None


@dataclass(frozen=True)
class Disarm:
    name: str


@dataclass(frozen=True)
class Ring:
    i: int


@dataclass(frozen=True)
class Armed:
    count: int


@dataclass(frozen=True)
class Disarmed:
    name: str


@dataclass(frozen=True)
class Rang:
    i: int


@dataclass(frozen=True)
class GetRings:
    pass


def _handle(state: tuple, cmd: object):
    match cmd:
        case Arm(count=n, after=after, at=at):
            timers = [
                schedule(f"t{i}", Ring(i), at=at) if at else schedule(f"t{i}", Ring(i), after=after)
                for i in range(n)
            ]
            return persist(Armed(n), schedule=timers)
        case Disarm(name=name):
            return persist(Disarmed(name), cancel=name)
        case Ring(i=i):
            return persist(Rang(i), reply=i)
        case GetRings():
            return reply(state)


def _apply(state: tuple, event: object) -> tuple:
    return (*state, event.i) if isinstance(event, Rang) else state


ALARM = AggregateType(
    "alarm",
    (),
    _handle,
    _apply,
    events=(Armed, Disarmed, Rang),
    commands=(Arm, Disarm, Ring, GetRings),
    placement="hosted",
    number_of_shards=8,
)


@pytest.fixture(scope="module")
def cluster(cassandra_contact, cassandra_keyspace) -> Iterator[dict]:
    with ray_cluster(2, "timers") as (c, workers, ns):
        host, port = cassandra_contact
        config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
        system = System.start(
            "timersys",
            store=StoreSpec.for_cassandra(config, create_schema=True),
            types=[ALARM],
            namespace=ns,
            coordinator_settings=CoordinatorSettings(poll_interval=0.5),
            timers=TimerSettings(poll_interval_s=0.5, max_fires_per_s=2000, max_in_flight=8),
        )
        try:
            yield {"cluster": c, "workers": workers, "system": system, "config": config}
        finally:
            system.shutdown(timeout=10)


def journal_of(config: CassandraConfig, ids: list[str]) -> dict[str, list]:
    """entity id -> its decoded events, in journal order."""

    async def read() -> dict[str, list]:
        journal = await CassandraJournal.connect(config)
        ser = Serialization()
        ALARM.register_types(ser)
        out: dict[str, list] = {}
        try:
            for eid in ids:
                out[eid] = [
                    ser.decode(e.serializer_id, e.manifest, e.payload)
                    async for e in journal.replay(ALARM.persistence_id(eid))
                ]
        finally:
            await journal.close()
        return out

    return asyncio.run(read())


def rings(events: list) -> list[int]:
    return [e.i for e in events if isinstance(e, Rang)]


def wait_timers_idle(system: System, passes: int = 2) -> None:
    """Until every timer service has run ``passes`` full polling passes since now that found
    nothing due (backlog 0) with nothing in flight: a due timer, even a wrongly kept one, would
    have been fired by such a pass. Then "this never fired" can be asserted."""
    base = [i["passes"] for i in system.timer_info()]

    def idle() -> bool:
        nonlocal base
        now = system.timer_info()
        if len(now) != len(base):  # services came or went: count again from here
            base = [i["passes"] for i in now]
            return False
        return all(
            i["passes"] >= b + passes and i["backlog"] == 0 and i["in_flight"] == 0
            for i, b in zip(now, base)
        )

    wait_for(idle, 120, "the timer services never went idle")


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.5)
    return time.monotonic() - started


def test_a_timer_fires_into_a_passivated_aggregate_and_a_cancelled_one_never(cluster) -> None:
    system: System = cluster["system"]
    ref = system.entity(ALARM, "sleeper")
    ref.ask(Arm(3, after=3.0))
    ref.ask(Disarm("t1"))
    assert ray.get(ref.actor.passivate.remote("sleeper")) is True
    config = cluster["config"]
    wait_for(
        lambda: len(rings(journal_of(config, ["sleeper"])["sleeper"])) >= 2,
        60,
        "the timers did not fire",
    )
    wait_timers_idle(system)  # past t1's due time: a wrong fire of it would have happened
    events = journal_of(config, ["sleeper"])["sleeper"]
    assert sorted(rings(events)) == [0, 2]  # once each; the cancelled t1 never
    assert ref.ask(GetRings()) in ((0, 2), (2, 0))


def test_the_timers_of_a_lost_node_fire_from_the_shards_new_home(cluster) -> None:
    system: System = cluster["system"]
    by_shard = {shard_of(e, ALARM.number_of_shards): e for e in (f"lost-{i}" for i in range(200))}
    for eid in by_shard.values():  # every shard gets a home
        system.entity(ALARM, eid).ask(GetRings())
    allocation = system.allocation()
    victim = next(w for w in cluster["workers"] if allocation.get(w.node_id))
    shards = {s.shard for s in allocation[victim.node_id] if s.type_name == "alarm"}
    ids = [
        e
        for e in (f"lost-{i}" for i in range(200))
        if shard_of(e, ALARM.number_of_shards) in shards
    ][:4]
    assert ids, allocation
    for eid in ids:
        system.entity(ALARM, eid).ask(Arm(5, after=6.0))
    cluster["cluster"].remove_node(victim, allow_graceful=False)
    cluster["workers"].remove(victim)
    config = cluster["config"]
    took = wait_for(
        lambda: all(len(rings(ev)) >= 5 for ev in journal_of(config, ids).values()),
        120,
        "the lost node's timers did not fire elsewhere",
    )
    wait_timers_idle(system)  # no second fire is still on its way
    for eid, events in journal_of(config, ids).items():
        assert sorted(rings(events)) == [0, 1, 2, 3, 4], (eid, events)
    assert victim.node_id not in system.allocation()
    print(
        f"node loss: {len(ids) * 5} timers fired from the new homes {took:.1f} s after "
        f"the node was removed",
        flush=True,
    )


def test_ten_thousand_timers_due_at_once_fire_exactly_once(cluster) -> None:
    system: System = cluster["system"]
    ids = [f"crowd-{i}" for i in range(100)]
    due = datetime.now(UTC) + timedelta(seconds=20)
    fired_before = sum(i.get("fired", 0) for i in system.timer_info())
    for eid in ids:  # 100 aggregates x 100 timers, all due at the same instant
        system.entity(ALARM, eid).ask(Arm(100, at=due), timeout=60)
    armed_late = datetime.now(UTC) > due
    took = wait_for(
        lambda: sum(i.get("fired", 0) for i in system.timer_info()) - fired_before >= 10_000,
        240,
        "10,000 timers were not all delivered",
    )
    wait_timers_idle(system)  # no second fire is still on its way
    journal = journal_of(cluster["config"], ids)
    counts = Counter(len(rings(ev)) for ev in journal.values())
    assert counts == {100: 100}, counts
    assert all(sorted(rings(ev)) == list(range(100)) for ev in journal.values())
    info = system.timer_info()
    p99 = max(i["lateness_ms"]["p99"] or 0 for i in info)
    worst = max(i["lateness_ms"]["max"] or 0 for i in info)
    print(
        f"10,000 timers due at once: delivered within {took:.1f} s of the check starting; "
        f"lateness p99 {p99} ms, max {worst} ms (armed after due: {armed_late})",
        flush=True,
    )
    assert worst < 240_000
