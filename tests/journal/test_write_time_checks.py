"""What is written can always be read back (issue 18), checked where aggregates write, no Ray:

* defect 1: an event whose payload would not decode (NaN written as ``null``, an ``int`` where
  the dataclass says ``str``) used to be acknowledged and then broke recovery for good; now the
  command fails with ``UnserializableError`` (not applied), nothing is stored, the aggregate
  stays alive and unchanged, and a restart recovers. A state that would not read back is never
  stored as a snapshot;
* defect 2 (the Ray-free half): classes defined in a test function (pickled by value, as Ray
  does with ``__main__`` classes) stay picklable after any number of encodes and decodes;
* defect 3: an entity id with a lone surrogate is a ``ConfigError`` everywhere, not a raw
  ``UnicodeEncodeError`` from the shard hash.
"""

# no "from __future__ import annotations": the classes of a test function below need real
# annotations (string ones could not be resolved outside the function)
import math
from dataclasses import dataclass

import cloudpickle
import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.journal.errors import (
    ConfigError,
    NotAppliedError,
    UnserializableError,
)
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, persist, reply
from raysource.runtime.shard_id import shard_of
from raysource.testing.testkit import AggregateTestKit


@dataclass(frozen=True)
class Measured:
    value: float
    by: str


@dataclass(frozen=True)
class Scaled:
    factor: float


@dataclass(frozen=True)
class Gauge:
    total: float = 1.0
    readings: tuple[Measured, ...] = ()


@dataclass(frozen=True)
class Record:  # a command: record this measurement (fields untyped on purpose)
    value: object
    by: object


@dataclass(frozen=True)
class Scale:
    factor: float


def _handle(state: Gauge, command):
    match command:
        case Record(value, by):
            return persist(Measured(value, by), reply=lambda s: len(s.readings))
        case Scale(factor):
            return persist(Scaled(factor))
        case "get":
            return reply(state)


def _apply(state: Gauge, event) -> Gauge:
    match event:
        case Measured():
            return Gauge(state.total, state.readings + (event,))
        case Scaled(factor):
            return Gauge(state.total * factor, state.readings)  # may overflow to inf
    return state


GAUGE = AggregateType(
    name="gauge",
    initial_state=Gauge(),
    command_handler=_handle,
    event_handler=_apply,
    events=(Measured, Scaled),
    commands=(Record, Scale),
    snapshot=SnapshotPolicy(every_n_events=1, keep=5),
)


@pytest.mark.parametrize(
    "value, by",
    [
        (math.nan, "alice"),  # was written as null: every later recovery failed
        (math.inf, "alice"),
        (-math.inf, "alice"),
        (1.5, 42),  # an int where the dataclass says str
        ("1.5", "alice"),  # a str where it says float
        (True, "alice"),  # a bool is not a float
    ],
)
def test_an_event_that_would_not_read_back_is_refused_and_the_aggregate_lives_on(value, by):
    with AggregateTestKit(GAUGE, roundtrip=False) as kit:
        assert kit.run(Record(2.0, "ok")).reply == 1
        before = kit.state
        bad = kit.run(Record(value, by))
        assert isinstance(bad.error, UnserializableError)
        assert isinstance(bad.error, NotAppliedError)  # safe to re-send once fixed
        assert bad.error.persistence_id == "gauge|test-1" and bad.error.sequence_nr == 2
        assert bad.events == () and kit.state == before and kit.core.sequence_nr == 1
        # alive: the next command is applied, and the journal recovers
        assert kit.run(Record(3.0, "ok")).reply == 2
        kit.restart()
        assert kit.state.readings == (Measured(2.0, "ok"), Measured(3.0, "ok"))


def test_an_int_for_a_float_field_is_accepted_as_the_equal_float():
    with AggregateTestKit(GAUGE, roundtrip=False) as kit:
        assert kit.run(Record(2, "ok")).ok
        kit.restart()
        (reading,) = kit.state.readings
        assert reading.value == 2.0 and type(reading.value) is float


def test_a_state_that_would_not_read_back_is_never_snapshotted():
    with AggregateTestKit(GAUGE, roundtrip=False) as kit:
        assert kit.run(Scale(1e200)).ok
        assert kit.run(Scale(1e200)).ok  # the event is fine; the state's total is now inf
        assert math.isinf(kit.state.total)
        snaps = kit.snapshot_store.snapshots("gauge|test-1")
        assert [s.sequence_nr for s in snaps] == [1]  # the inf state was not stored
        for s in snaps:  # and everything that was stored reads back
            kit.serialization.decode(s.serializer_id, s.manifest, s.payload)
        assert kit.core.stats.snapshot_failures == 1
        kit.restart()  # snapshot 1 + replay of event 2 gives the same state
        assert math.isinf(kit.state.total)


def test_the_test_kit_applies_the_same_rule_to_states():
    with AggregateTestKit(GAUGE) as kit:  # round-trip checks on: the state is checked too
        assert kit.run(Scale(1e200)).ok
        with pytest.raises(UnserializableError, match="inf"):
            kit.run(Scale(1e200))


def test_classes_defined_in_a_function_stay_picklable_after_encodes_and_decodes():
    # classes of a function are pickled by value, as Ray ships those of __main__ or a notebook
    import enum

    class Tier(enum.Enum):
        GOLD = "gold"

    @dataclass(frozen=True)
    class Inner:
        tier: Tier
        n: int

    @dataclass(frozen=True)
    class Outer:
        inner: Inner
        more: list[Inner]

    ser = Serialization()
    ser.register(Outer, "t.Outer")
    ser.register(Inner, "t.Inner")
    value = Outer(Inner(Tier.GOLD, 1), [Inner(Tier.GOLD, 2)])
    for _ in range(3):
        stored = ser.encode(value)
        assert ser.decode(*stored) == value
        assert ser.decode(*ser.encode(Inner(Tier.GOLD, 3))) == Inner(Tier.GOLD, 3)
        for cls in (Outer, Inner, Tier):
            clone = cloudpickle.loads(cloudpickle.dumps(cls))  # raised TypeError before
            assert clone.__qualname__ == cls.__qualname__
        back = cloudpickle.loads(cloudpickle.dumps(ser.decode(*stored)))
        assert back.inner.n == 1 and back.more[0].tier.value == "gold"
    # a second serializer in the same process (a host, the inspect tool) changes nothing
    other = Serialization()
    other.register(Outer, "t.Outer")
    assert other.decode(*ser.encode(value)) == value
    cloudpickle.dumps(Outer)


@pytest.mark.parametrize("entity_id", ["\ud800", "a\udfffb", "x" + "\udc80" * 3])
def test_an_entity_id_with_a_lone_surrogate_is_a_config_error(entity_id):
    with pytest.raises(ConfigError, match="surrogate"):
        shard_of(entity_id, 8)
    with pytest.raises(ConfigError, match="surrogate"):
        GAUGE.persistence_id(entity_id)
    with pytest.raises(ConfigError):
        AggregateTestKit(GAUGE, entity_id=entity_id)
    assert shard_of("a\U0001f600b", 8) in range(8)  # a proper astral character is fine
