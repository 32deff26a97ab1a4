"""Types defined anywhere work (issue 18, defect 2): aggregate, command, event and state classes
declared in the user's own script, notebook or test module, which Ray ships *by value*
(cloudpickle copies the class), survive any number of encodes and decodes.

Before, msgspec left an unpicklable cache on every class it had decoded into: a host that
recovered from a snapshot then failed ``state()`` and event-valued replies, and a driver that
had decoded events (as ``raysource inspect`` does) could not start a System afterwards. Here the
types live in this module, which is registered with cloudpickle as pickled by value (exactly
how Ray treats ``__main__``); a System runs on Ray and Cassandra with snapshots, is shut down,
and a second System recovers from the snapshots; both placements.
"""

from __future__ import annotations

import enum
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import cloudpickle
import pytest
import ray

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import UnserializableError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, persist, reply
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.slow, pytest.mark.timeout(240)]


class Tier(enum.Enum):
    STALLS = "stalls"
    BALCONY = "balcony"


@dataclass(frozen=True)
class Price:
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Sell:
    seat: str
    tier: Tier
    price: Price


@dataclass(frozen=True)
class Peek:
    pass


@dataclass(frozen=True)
class Sold:
    seat: str
    tier: Tier
    price: Price
    at: datetime


@dataclass(frozen=True)
class Box:
    sold: tuple[Sold, ...] = ()


AT = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def _handle(state: Box, command):
    match command:
        case Sell(seat, tier, price):
            event = Sold(seat, tier, price, AT)
            return persist(event, reply=lambda _s: event)  # an event-valued reply
        case Peek():
            return reply(state)


def _apply(state: Box, event: Sold) -> Box:
    return Box(state.sold + (event,))


BOX = AggregateType(
    name="box",
    initial_state=Box(),
    command_handler=_handle,
    event_handler=_apply,
    events=(Sold,),
    commands=(Sell, Peek),
    types=(Price,),
    snapshot=SnapshotPolicy(every_n_events=2, keep=2),
)


@pytest.fixture(scope="module", autouse=True)
def _by_value():
    """Ship this module's classes and functions by value, as Ray does with ``__main__`` (Ray
    pickles with its own copy of cloudpickle, ``ray.cloudpickle``: register with both)."""
    import ray.cloudpickle

    module = sys.modules[__name__]
    for pickler in (cloudpickle, ray.cloudpickle):
        pickler.register_pickle_by_value(module)
    yield
    for pickler in (cloudpickle, ray.cloudpickle):
        pickler.unregister_pickle_by_value(module)


def _sale(i: int) -> Sell:
    return Sell(f"A{i}", Tier.BALCONY if i % 2 else Tier.STALLS, Price(Decimal(f"{i}.50"), "EUR"))


def _start(contact, keyspace, placement: str) -> System:
    host, port = contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=keyspace)
    return System.start(
        f"any{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[BOX],
        placement={"box": placement},
    )


def _assert_picklable_by_value() -> None:
    for cls in (Tier, Price, Sell, Peek, Sold, Box):
        for pickler in (cloudpickle, ray.cloudpickle):
            clone = pickler.loads(pickler.dumps(cls))  # TypeError before: msgspec's cache
            assert clone.__qualname__ == cls.__qualname__
        assert "__msgspec_cache__" not in cls.__dict__


@pytest.mark.parametrize("placement", ["dedicated", "hosted"])
def test_types_of_a_user_module_survive_snapshots_and_recovery_through_ray(
    cassandra_contact, cassandra_keyspace, ray_local, placement
) -> None:
    # the driver decodes first (as `raysource inspect` does), any number of times
    ser = Serialization()
    BOX.register_types(ser)
    for i in range(3):
        assert ser.decode(
            *ser.encode(Sold("Z9", Tier.STALLS, Price(Decimal(i), "EUR"), AT))
        ) == Sold("Z9", Tier.STALLS, Price(Decimal(i), "EUR"), AT)
        assert ser.decode(*ser.encode(Box())) == Box()
    _assert_picklable_by_value()

    entity = f"night-{placement}"
    expected = tuple(Sold(s.seat, s.tier, s.price, AT) for s in map(_sale, range(5)))
    system = _start(cassandra_contact, cassandra_keyspace, placement)  # pickles BOX by value
    try:
        ref = system.entity(BOX, entity)
        for i in range(5):  # snapshots at 2 and 4
            assert ref.ask(_sale(i), timeout=60) == expected[i]
            if i == 2:  # an event that would not read back: refused, nothing written
                with pytest.raises(UnserializableError):
                    ref.ask(Sell("X1", Tier.STALLS, Price(Decimal("NaN"), "EUR")), timeout=60)
        assert ref.state(timeout=60) == Box(expected)
    finally:
        system.shutdown()

    again = _start(cassandra_contact, cassandra_keyspace, placement)
    try:
        ref = again.entity(BOX, entity)
        for _ in range(3):  # every call works, not 1 of 3
            assert ref.state(timeout=60) == Box(expected)
            assert ref.ask(Peek(), timeout=60) == Box(expected)
        info = ray.get(ref.actor.info.remote(), timeout=60)
        recovery = info["recoveries"][entity]
        assert recovery["snapshot_sequence_nr"] == 4 and recovery["events_replayed"] == 1
        more = [ref.ask(_sale(i), timeout=60) for i in range(5, 8)]
        assert more == [Sold(s.seat, s.tier, s.price, AT) for s in map(_sale, range(5, 8))]
        assert ref.state(timeout=60) == Box(expected + tuple(more))
    finally:
        again.shutdown()
    # the driver decoded and received these classes many times: still picklable by value
    assert ser.decode(*ser.encode(Box(expected))) == Box(expected)
    _assert_picklable_by_value()
