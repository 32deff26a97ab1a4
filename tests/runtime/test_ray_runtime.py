"""The Ray host actors on real Ray and a real Cassandra journal.

Every test kills the actors it created. Placement-parametrized where cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import cloudpickle
import pytest
import ray.cloudpickle as ray_cloudpickle

from raysource.examples import seats
from raysource.examples.seats import (
    SHOW,
    CancelReservation,
    CreateShow,
    GetShow,
    ReservationCancelled,
    ReserveSeat,
    SeatReserved,
    seat_label,
)
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import PayloadTooLargeError, UnserializableError
from raysource.journal.serialization import Serialization
from raysource.runtime.actors.host_actor import HostActor, actor_options
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, persist
from raysource.runtime.errors import (
    AggregateStoppedError,
    CommandRejected,
    HandlerError,
    PassivatedError,
    UnknownCommandError,
)
from raysource.runtime.stores import StoreSpec
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.local_resolver import LocalResolver

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

# the test aggregate below lives in this module, which Ray workers cannot import by name
cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's vendored copy

SHOW_NO_SNAPSHOTS = dataclasses.replace(SHOW, name="shownosnap", snapshot=SnapshotPolicy())


@dataclass(frozen=True)
class EmitUnregistered:
    pass


@dataclass(frozen=True)
class NotRegistered:
    x: int


def _bad_handler(state, command):
    if isinstance(command, EmitUnregistered):
        return persist(NotRegistered(1), reply="never")
    return seats.handle_command(state, command)


BAD_SHOW = dataclasses.replace(SHOW, name="badshow", command_handler=_bad_handler)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def create() -> None:
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        await journal.close()

    asyncio.run(create())
    return cfg


@pytest.fixture(scope="module")
def store(config) -> StoreSpec:
    return StoreSpec("cassandra", config)


@pytest.fixture
def make_resolver(ray_local, store):
    made: list[LocalResolver] = []
    extra: list = []

    def make(placement: str = "dedicated", **settings) -> LocalResolver:
        r = LocalResolver(
            f"t{uuid.uuid4().hex[:8]}",
            store,
            placement={t.name: placement for t in (SHOW, SHOW_NO_SNAPSHOTS, BAD_SHOW)},
            host_settings={t.name: dict(settings) for t in (SHOW, SHOW_NO_SNAPSHOTS, BAD_SHOW)},
        )
        made.append(r)
        return r

    make.extra = extra  # handles created outside a resolver
    yield make
    import ray

    for r in made:
        r.kill_all()
    for h in extra:
        try:
            ray.kill(h)
        except Exception:
            pass


def run(coro):
    return asyncio.run(coro)


def journal_events(config: CassandraConfig, agg: AggregateType, entity_id: str) -> list:
    """(sequence_nr, event, writer_id) of the stored history, read from Cassandra."""
    ser = Serialization()
    agg.register_types(ser)

    async def read():
        journal = await CassandraJournal.connect(config)
        try:
            pid = agg.persistence_id(entity_id)
            return [
                (e.sequence_nr, ser.decode(e.serializer_id, e.manifest, e.payload), e.writer_id)
                async for e in journal.replay(pid)
            ]
        finally:
            await journal.close()

    return run(read())


def fold(agg: AggregateType, events: list) -> object:
    return agg.apply(agg.initial_state, [e for _, e, _ in events])


def eid() -> str:
    return f"show-{uuid.uuid4().hex[:8]}"


def until(fn, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def wait_for(predicate, timeout=10.0, interval=0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def actor_gone(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name)
        return False
    except ValueError:
        return True


def info(ref: EntityRef) -> dict:
    import ray

    return ray.get(ref.actor.info.remote(), timeout=30)


def fresh_recovery(ref: EntityRef, placement: str) -> dict:
    """Passivate the entity, reactivate it by a query, return the new core's recovery stats."""
    import ray

    before = ref.ask(GetShow())
    assert ray.get(ref.actor.passivate.remote(ref.entity_id), timeout=30) is True
    after = ref.ask(GetShow())  # dedicated: retried onto a fresh actor
    assert after == before
    rec = info(ref)["recoveries"][ref.entity_id]
    assert rec["sequence_nr"] >= 1
    return rec


PLACEMENTS = ["dedicated", "hosted"]


# --------------------------------------------------------------------------- sequential


@pytest.mark.parametrize(
    "placement,agg",
    [("dedicated", SHOW), ("hosted", SHOW_NO_SNAPSHOTS)],
    ids=["dedicated-snapshots", "hosted-no-snapshots"],
)
def test_1000_sequential_commands_then_recovery(make_resolver, config, placement, agg):
    ref = EntityRef(agg, eid(), make_resolver(placement))
    assert ref.ask(CreateShow(1000)) == seats.ShowCreated(1000)
    accepted = [seats.ShowCreated(1000)]
    rejected = 0
    for i in range(999):
        cmd = ReserveSeat(seat_label(i % 900), f"c{i}")  # the last 99 are double bookings
        try:
            accepted.append(ref.ask(cmd))
        except CommandRejected:
            rejected += 1
    assert rejected == 99 and len(accepted) == 901
    events = journal_events(config, agg, ref.entity_id)
    assert [s for s, _, _ in events] == list(range(1, 902))
    assert [e for _, e, _ in events] == accepted
    assert fold(agg, events) == ref.ask(GetShow())

    rec = fresh_recovery(ref, placement)
    if agg.snapshot.enabled:
        assert rec["snapshot_sequence_nr"] == 900 and rec["events_replayed"] == 1
    else:
        assert rec["snapshot_sequence_nr"] is None and rec["events_replayed"] == 901

    if agg.snapshot.enabled:  # corrupt the newest snapshot: recovery falls back to the older

        async def corrupt():
            snaps = await CassandraSnapshotStore.connect(config)
            try:
                newest = await snaps.load(agg.persistence_id(ref.entity_id))
                assert newest is not None and newest.sequence_nr == 900
                await snaps.save(dataclasses.replace(newest, payload=b"\x00garbage{"))
            finally:
                await snaps.close()

        run(corrupt())
        rec = fresh_recovery(ref, placement)
        assert rec["snapshots_skipped"] == 1
        assert rec["snapshot_sequence_nr"] == 800 and rec["events_replayed"] == 101


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_many_callers_hammering_one_show(make_resolver, config, placement):
    resolver = make_resolver(placement)
    show = eid()
    n_seats, n_callers = 40, 8
    wins: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        ref = EntityRef(SHOW, show, resolver)  # one ref per caller
        order = list(range(n_seats))
        random.Random(k).shuffle(order)
        mine = wins.setdefault(k, [])
        for i in order:
            try:
                mine.append(ref.ask(ReserveSeat(seat_label(i), f"c{k}")).seat)
            except CommandRejected:
                pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(n_callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    won = {seat: f"c{k}" for k, seats_ in wins.items() for seat in seats_}
    assert sum(len(s) for s in wins.values()) == n_seats == len(won)  # no double booking
    events = journal_events(config, SHOW, show)
    assert {e.seat: e.customer for _, e, _ in events} == won
    assert [s for s, _, _ in events] == list(range(1, n_seats + 1))
    stats = info(EntityRef(SHOW, show, resolver))["stats"]
    assert stats["commands"] == n_seats * n_callers
    assert stats["writes"] < stats["commands"]  # group commit: queued commands share a write
    assert stats["writes"] <= n_seats


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_pipelined_commands_are_processed_in_send_order(make_resolver, config, placement):
    import ray

    ref = EntityRef(SHOW, eid(), make_resolver(placement))
    # reserve/cancel one seat, alternating customers: succeeds only in send order
    cmds = []
    for i in range(100):
        cmds += [ReserveSeat("A1", f"c{i}"), CancelReservation("A1", f"c{i}")]
    refs = [ref.submit(c) for c in cmds]  # 200 in flight, none awaited
    replies = ray.get(refs, timeout=60)
    assert replies == [
        SeatReserved(c.seat, c.customer)
        if isinstance(c, ReserveSeat)
        else ReservationCancelled(c.seat, c.customer)
        for c in cmds
    ]

    async def gathered():
        return await asyncio.gather(*(ref.ask_async(c) for c in cmds[:60]))

    assert len(run(gathered())) == 60
    for c in cmds[:40]:
        ref.tell(c)
    assert ref.ask(GetShow()).reservations == {}  # queued behind the tells
    events = journal_events(config, SHOW, ref.entity_id)
    assert [e for _, e, _ in events] == replies + replies[:60] + replies[:40]


def test_raw_handle_errors_are_instances_of_raysource_errors(make_resolver):
    import ray

    ref = EntityRef(SHOW, eid(), make_resolver())
    handle = ref.actor
    assert ray.get(handle.ask.remote(ReserveSeat("A1", "alice"))) == SeatReserved("A1", "alice")
    with pytest.raises(CommandRejected) as err:
        ray.get(handle.ask.remote(ReserveSeat("A1", "bob")))
    assert err.value.reason == "seat A1 is already reserved"
    with pytest.raises(CommandRejected) as err:  # through the ref: unwrapped
        ref.ask(ReserveSeat("A1", "bob"))
    assert type(err.value) is CommandRejected


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_kill_mid_load_loses_nothing_acknowledged(make_resolver, config, placement):
    import ray

    resolver = make_resolver(placement)
    show = eid()
    acked: list[SeatReserved] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def caller(k: int) -> None:
        ref = EntityRef(SHOW, show, resolver)
        for i in range(k, 100, 4):
            if stop.is_set():
                return
            try:
                reply = ref.ask(ReserveSeat(seat_label(i), f"c{k}"))
                with lock:
                    acked.append(reply)
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
                return

    handle = resolver.resolve(SHOW, show)
    ray.get(handle.ping.remote())
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 20, timeout=30, interval=0.01)
    ray.kill(handle)
    for t in threads:
        t.join(60)
    stop.set()
    # idempotency keys on (the default): the refs re-send what the kill left unknown under
    # the same keys, so no caller sees HostCrashedError (tests/runtime/test_idempotent_ray.py)
    assert not failures, failures
    resolver.invalidate(SHOW, show)
    state = until(lambda: EntityRef(SHOW, show, resolver).ask(GetShow(), timeout=20))
    events = journal_events(config, SHOW, show)
    assert [s for s, _, _ in events] == list(range(1, len(events) + 1))  # no gaps
    stored = {e.seat: e.customer for _, e, _ in events}
    assert all(stored.get(a.seat) == a.customer for a in acked)  # every ack is durable
    assert state.reservations == stored  # the next activation recovers exactly the journal


def test_two_activations_of_one_persistence_id_are_fenced(make_resolver, config):
    """Epoch guard (the default): the NEWER activation wins. The older one's next write is
    fenced after it was sent: outcome unknown (never "not applied"), it stops, and that write
    never becomes part of the log."""
    import ray

    from raysource.journal.errors import OutcomeUnknownError

    resolver = make_resolver()
    show = eid()
    spec = resolver.spec_for(SHOW, show)
    first = resolver.resolve(SHOW, show)
    ray.get(first.ask.remote(GetShow()))  # recovered at 0: epoch 1
    dup = HostActor.options(**actor_options(spec, name=spec.actor_name + ":dup")).remote(spec)
    make_resolver.extra.append(dup)
    ray.get(dup.ask.remote(GetShow()))  # recovered at 0: epoch 2, fences the first
    with pytest.raises(OutcomeUnknownError):  # written, then fenced by its fence read
        ray.get(first.ask.remote(ReserveSeat("A1", "alice")))
    with pytest.raises((PassivatedError, AggregateStoppedError)):  # it stopped for good
        ray.get(first.ask.remote(GetShow()))
    assert ray.get(dup.ask.remote(ReserveSeat("A1", "bob"))) == SeatReserved("A1", "bob")

    # now both hammer concurrently with a fresh duplicate: one of them loses, never interleaved
    dup2 = HostActor.options(**actor_options(spec, name=spec.actor_name + ":dup2")).remote(spec)
    make_resolver.extra.append(dup2)
    ray.get(dup2.ask.remote(GetShow()))
    pending = []
    for i in range(2, 60):
        pending.append(dup.ask.remote(ReserveSeat(seat_label(i), "dup")))
        pending.append(dup2.ask.remote(ReserveSeat(seat_label(i), "dup2")))
    outcomes = []
    for p in pending:
        try:
            outcomes.append(ray.get(p, timeout=60))
        except (AggregateStoppedError, PassivatedError):
            outcomes.append("stopped")
        except OutcomeUnknownError:
            outcomes.append("unknown")
        except CommandRejected:
            outcomes.append("rejected")
        except ray.exceptions.ActorDiedError:  # the fenced host exits with calls queued
            outcomes.append("died")
    events = journal_events(config, SHOW, show)
    assert [s for s, _, _ in events] == list(range(1, len(events) + 1))
    runs = [w for i, (_, _, w) in enumerate(events) if i == 0 or events[i - 1][2] != w]
    assert len(runs) == len(set(runs))  # each writer wrote one contiguous run, no interleaving
    assert events[0][1] == SeatReserved("A1", "bob")  # the fenced first write is not in the log
    assert {"unknown", "stopped", "died"} & set(outcomes)
    assert "died" not in outcomes[1::2]  # the winner (dup2) lived
    # the journal agrees with a fresh activation
    ray.kill(dup2)
    resolver.invalidate(SHOW, show)
    state = until(lambda: EntityRef(SHOW, show, resolver).ask(GetShow(), timeout=20))
    assert state == fold(SHOW, events)


# --------------------------------------------------------------------------- passivation


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_idle_passivation_and_reactivation(make_resolver, config, placement):

    resolver = make_resolver(placement, idle_timeout_s=0.6)
    ref = EntityRef(SHOW, eid(), resolver)
    ref.ask(ReserveSeat("A1", "alice"))
    name = resolver.spec_for(SHOW, ref.entity_id).actor_name
    if placement == "dedicated":  # the actor retires and exits, freeing its name
        wait_for(lambda: actor_gone(name), timeout=10)
    else:
        wait_for(lambda: info(ref)["active"] == 0, timeout=10)
    assert ref.ask(GetShow()).reservations == {"A1": "alice"}  # recovered
    # commands at about the idle timeout race with the sweep: never lost, never twice
    for i in range(1, 8):
        time.sleep(0.5 + 0.05 * (i % 3))
        assert ref.ask(ReserveSeat(seat_label(i), "bob")) == SeatReserved(seat_label(i), "bob")
    events = journal_events(config, SHOW, ref.entity_id)
    assert [s for s, _, _ in events] == list(range(1, 9))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_commands_racing_with_explicit_passivation(make_resolver, config, placement):
    import ray

    ref = EntityRef(SHOW, eid(), make_resolver(placement))
    ref.ask(GetShow())

    async def burst():
        tasks = [
            asyncio.ensure_future(ref.ask_async(ReserveSeat(seat_label(i), "c"))) for i in range(40)
        ]
        await asyncio.sleep(0.01)
        passivated = ref.actor.passivate.remote(ref.entity_id)
        tasks += [
            asyncio.ensure_future(ref.ask_async(ReserveSeat(seat_label(i), "c")))
            for i in range(40, 80)
        ]
        replies = await asyncio.gather(*tasks)
        return replies, await passivated

    replies, was_active = run(burst())
    assert was_active is True
    assert sorted(r.seat for r in replies) == sorted(seat_label(i) for i in range(80))
    events = journal_events(config, SHOW, ref.entity_id)
    assert [s for s, _, _ in events] == list(range(1, 81))  # each command exactly once
    assert ray.get(ref.actor.ping.remote()) == "pong"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_bad_input_gets_typed_errors_and_aggregate_stays_alive(make_resolver, config, placement):
    ref = EntityRef(BAD_SHOW, eid(), make_resolver(placement))
    assert ref.ask(ReserveSeat("A1", "alice")) == SeatReserved("A1", "alice")
    with pytest.raises(UnknownCommandError):
        ref.ask("not a command")
    with pytest.raises(HandlerError):
        ref.ask(ReserveSeat(None, "x"))  # the handler raises on a None seat
    with pytest.raises(UnserializableError):
        ref.ask(EmitUnregistered())
    with pytest.raises(PayloadTooLargeError):
        ref.ask(ReserveSeat("A2", "x" * 2_000_000))
    assert ref.ask(ReserveSeat("A2", "bob")) == SeatReserved("A2", "bob")
    events = journal_events(config, BAD_SHOW, ref.entity_id)
    assert [e for _, e, _ in events] == [SeatReserved("A1", "alice"), SeatReserved("A2", "bob")]
    assert info(ref)["stats"]["failed_commands"] == 4


def test_dedicated_actor_without_an_active_aggregate_exits_when_idle(make_resolver):
    import ray

    resolver = make_resolver("dedicated", idle_timeout_s=0.6)
    show = eid()
    handle = resolver.resolve(SHOW, show)
    assert ray.get(handle.ping.remote()) == "pong"  # alive, but its aggregate never activated
    name = resolver.spec_for(SHOW, show).actor_name

    wait_for(lambda: actor_gone(name), timeout=10)


# --------------------------------------------------------------------------- metrics


def test_host_actor_info_reports_its_metrics(make_resolver):
    import ray

    resolver = make_resolver("hosted")
    show = eid()
    ref = EntityRef(SHOW, show, resolver)
    cmds = [ReserveSeat(seat_label(i), f"c{i}") for i in range(30)]
    ray.get([ref.submit(c) for c in cmds], timeout=60)  # pipelined: group commit
    with pytest.raises(CommandRejected):
        ref.ask(ReserveSeat("A1", "bob"))
    out = info(ref)
    assert out["metrics_forward_errors"] == []  # ray.util.metrics accepted every record
    m = out["metrics"]
    assert m["raysource_commands_total"]["type=show,outcome=accepted"] == 30
    assert m["raysource_commands_total"]["type=show,outcome=rejected"] == 1
    assert m["raysource_events_persisted_total"]["type=show"] == 30
    writes = m["raysource_journal_writes_total"]["type=show"]
    assert writes == m["raysource_persist_latency_seconds"]["type=show"]["count"] <= 30
    assert m["raysource_recovery_seconds"]["type=show"]["count"] == 1
    shard = resolver.spec_for(SHOW, show).shard
    assert m["raysource_active_aggregates"][f"type=show,host=shard-{shard}"] == 1
    assert ray.get(ref.actor.passivate.remote(show), timeout=30) is True
    m = info(ref)["metrics"]
    assert m["raysource_passivations_total"]["type=show,reason=passivated"] == 1
    assert m["raysource_active_aggregates"][f"type=show,host=shard-{shard}"] == 0
