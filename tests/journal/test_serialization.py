"""Serialization: typed JSON round trips, schema evolution, typed errors, pickle opt-in."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from decimal import Decimal

import pytest

from raysource.journal.errors import (
    ConfigError,
    CorruptPayloadError,
    MissingUpcasterError,
    PayloadTooLargeError,
    SerializationError,
    UnknownManifestError,
    UnserializableError,
)
from raysource.journal.serialization import (
    JSON_SERIALIZER_ID,
    PICKLE_SERIALIZER_ID,
    PRIMITIVE_MANIFEST,
    Serialization,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Seat:
    row: int
    number: str


@dataclass(frozen=True)
class SeatReserved:
    seat: Seat
    by: str
    at: datetime
    price: Decimal
    booking: uuid.UUID
    color: Color
    history: list[Seat] = field(default_factory=list)
    pair: tuple[int, str] = (0, "")
    counts: dict[int, str] = field(default_factory=dict)
    labels: frozenset[str] = frozenset()
    note: str | None = None


def sample() -> SeatReserved:
    return SeatReserved(
        seat=Seat(3, "A"),
        by="alice",
        at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        price=Decimal("12.50"),
        booking=uuid.UUID(int=42),
        color=Color.BLUE,
        history=[Seat(1, "B"), Seat(2, "C")],
        pair=(7, "x"),
        counts={1: "one", 2: "two"},
        labels=frozenset({"vip"}),
    )


def test_roundtrip_nested_typed_dataclass():
    ser = Serialization()
    ser.register(SeatReserved, "seats.SeatReserved")
    ev = sample()
    ser_id, manifest, payload = ser.encode(ev)
    assert ser_id == JSON_SERIALIZER_ID
    assert manifest == "seats.SeatReserved#1"
    assert b'"alice"' in payload  # readable with cqlsh
    back = ser.decode(ser_id, manifest, payload)
    assert back == ev and type(back.seat) is Seat and type(back.at) is datetime
    assert ser.roundtrip(ev) == ev


def test_register_as_decorator_and_default_name():
    ser = Serialization()

    @ser.register
    @dataclass(frozen=True)
    class Ping:
        n: int

    @ser.register(name="x.Pong", version=3, upcasters={1: lambda d: d, 2: lambda d: d})
    @dataclass(frozen=True)
    class Pong:
        n: int

    assert ser.encode(Ping(1))[1].endswith("Ping#1")
    assert ser.encode(Pong(1))[1] == "x.Pong#3"
    assert ser.roundtrip(Pong(5)) == Pong(5)


@pytest.mark.parametrize("value", ["hi", 3, 2.5, True, None, [1, "a", None], {"k": [1, {"z": 2}]}])
def test_primitive_replies_use_builtin_manifest(value):
    ser = Serialization()
    ser_id, manifest, payload = ser.encode(value)
    assert (ser_id, manifest) == (JSON_SERIALIZER_ID, PRIMITIVE_MANIFEST)
    assert ser.decode(ser_id, manifest, payload) == value


def test_schema_evolution_v1_written_read_as_v3():
    old = Serialization()

    @dataclass(frozen=True)
    class ReservedV1:
        seat: str

    old.register(ReservedV1, "seats.Reserved", version=1)
    stored = old.encode(ReservedV1("A1"))
    assert stored[1] == "seats.Reserved#1"

    @dataclass(frozen=True)
    class Reserved:  # v3: seat split into row + number, and a new field with a default
        row: str
        number: int
        by: str

    def v1_to_v2(doc: dict) -> dict:
        return {"row": doc["seat"][0], "number": int(doc["seat"][1:])}

    def v2_to_v3(doc: dict) -> dict:
        return {**doc, "by": "unknown"}

    new = Serialization()
    new.register(Reserved, "seats.Reserved", version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
    assert new.decode(*stored) == Reserved("A", 1, "unknown")
    # current version needs no upcaster
    assert new.roundtrip(Reserved("B", 2, "bob")) == Reserved("B", 2, "bob")


def test_missing_upcaster_names_record():
    old, new = Serialization(), Serialization()

    @dataclass(frozen=True)
    class E:
        a: int

    old.register(E, "e.E", version=1)
    new.register(E, "e.E", version=3, upcasters={2: lambda d: d})
    stored = old.encode(E(1))
    with pytest.raises(MissingUpcasterError) as ei:
        new.decode(*stored, persistence_id="cart|1", sequence_nr=17)
    assert ei.value.persistence_id == "cart|1" and ei.value.sequence_nr == 17
    assert "cart|1" in str(ei.value) and "17" in str(ei.value)


def test_unknown_manifest_and_newer_version():
    ser = Serialization()
    with pytest.raises(UnknownManifestError) as ei:
        ser.decode(JSON_SERIALIZER_ID, "nope.Gone#1", b"{}", persistence_id="p", sequence_nr=2)
    assert ei.value.persistence_id == "p" and ei.value.sequence_nr == 2
    ser.register(Seat, "s.Seat")
    with pytest.raises(UnknownManifestError):
        ser.decode(JSON_SERIALIZER_ID, "s.Seat#2", b'{"row":1,"number":"a"}')
    with pytest.raises(UnknownManifestError):
        ser.decode(99, "s.Seat#1", b"{}")
    with pytest.raises(UnknownManifestError):
        ser.decode(JSON_SERIALIZER_ID, "no-version", b"{}")


@pytest.mark.parametrize(
    "payload", [b"\xff\x00garbage", b'{"row": "not-an-int", "number": "a"}', b"[1,2]", b'{"row":1}']
)
def test_corrupt_payload(payload):
    ser = Serialization()
    ser.register(Seat, "s.Seat")
    with pytest.raises(CorruptPayloadError) as ei:
        ser.decode(JSON_SERIALIZER_ID, "s.Seat#1", payload, persistence_id="p", sequence_nr=9)
    assert ei.value.sequence_nr == 9


def test_corrupt_primitive_payload():
    with pytest.raises(CorruptPayloadError):
        Serialization().decode(JSON_SERIALIZER_ID, PRIMITIVE_MANIFEST, b"{nope")


def test_unserializable_objects():
    ser = Serialization()

    @dataclass(frozen=True)
    class NotRegistered:
        a: int

    class Plain:
        pass

    for obj in (NotRegistered(1), Plain(), (1, 2), {1: "int key"}, Color.RED, {"x": Plain()}):
        with pytest.raises(UnserializableError) as ei:
            ser.encode(obj, persistence_id="p", sequence_nr=3)
        assert ei.value.persistence_id == "p"

    @dataclass(frozen=True)
    class HasObject:
        x: object

    ser.register(HasObject, "h.H")
    with pytest.raises(UnserializableError):
        ser.encode(HasObject(Plain()))


def test_payload_too_large():
    ser = Serialization(max_payload_bytes=100)
    ser.register(Seat, "s.Seat")
    ser.encode(Seat(1, "x" * 50))
    with pytest.raises(PayloadTooLargeError) as ei:
        ser.encode(Seat(1, "x" * 200), persistence_id="p", sequence_nr=1)
    assert isinstance(ei.value, SerializationError) and "100" in str(ei.value)


def test_register_validation():
    ser = Serialization()
    ser.register(Seat, "s.Seat")
    ser.register(Seat, "s.Seat")  # idempotent
    with pytest.raises(ConfigError):
        ser.register(SeatReserved, "s.Seat")  # name clash
    with pytest.raises(ConfigError):
        ser.register(int)  # not a dataclass
    with pytest.raises(ConfigError):
        ser.register(SeatReserved, "bad#name")
    with pytest.raises(ConfigError):
        ser.register(SeatReserved, "r", version=2, upcasters={5: lambda d: d})


class Opaque:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.v == self.v


def test_pickle_is_opt_in():
    safe = Serialization()
    with pytest.raises(UnserializableError):
        safe.encode(Opaque(1))
    unsafe = Serialization(allow_pickle=True)
    ser_id, manifest, payload = unsafe.encode(Opaque({"a": (1, 2)}))
    assert ser_id == PICKLE_SERIALIZER_ID
    assert unsafe.decode(ser_id, manifest, payload) == Opaque({"a": (1, 2)})
    # a store written with pickle cannot be decoded by a serializer that did not opt in
    with pytest.raises(UnknownManifestError):
        safe.decode(ser_id, manifest, payload)
    with pytest.raises(CorruptPayloadError):
        unsafe.decode(ser_id, manifest, b"not a pickle")


def test_pickle_per_class_registration():
    ser = Serialization()
    ser.register(Opaque, "o.Opaque", pickle=True)
    sid, manifest, payload = ser.encode(Opaque(3))
    assert sid == PICKLE_SERIALIZER_ID and manifest == "pickle:o.Opaque"
    assert ser.decode(sid, manifest, payload) == Opaque(3)
    # registration does not open the door to arbitrary pickles
    _, m2, p2 = Serialization(allow_pickle=True).encode(Color)
    with pytest.raises(UnknownManifestError):
        ser.decode(PICKLE_SERIALIZER_ID, m2, p2)


def test_errors_pickle_with_location():
    import pickle

    err = CorruptPayloadError("bad", persistence_id="p", sequence_nr=4)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CorruptPayloadError and back.sequence_nr == 4


# --------------------------------------------------------------------------- the round-trip rule


def test_round_trip_rule_refuses_with_the_field_path_and_accepts_the_numeric_tower():
    ser = Serialization()
    ser.register(SeatReserved, "seats.SeatReserved")
    base = sample()
    from dataclasses import replace

    wrong_row = r"Expected `int`, got `str` - at `\$\.seat\.row`"
    with pytest.raises(UnserializableError, match=wrong_row) as ei:
        ser.encode(replace(base, seat=Seat("3", "A")), persistence_id="p", sequence_nr=5)
    assert ei.value.persistence_id == "p" and ei.value.sequence_nr == 5
    with pytest.raises(UnserializableError, match="NaN"):
        ser.encode(replace(base, price=Decimal("NaN")))
    with pytest.raises(UnserializableError, match=r"\$\.pair.*list.*tuple"):
        ser.encode(replace(base, pair=[7, "x"]))
    with pytest.raises(UnserializableError, match=r"\$\.labels.*set.*frozenset"):
        ser.encode(replace(base, labels={"vip"}))
    with pytest.raises(UnserializableError, match="null"):  # NaN in a float field
        ser.register(Reading, "r.Reading")
        ser.encode(Reading(float("nan")))
    assert ser.roundtrip(Reading(2)) == Reading(2.0)  # an int for a float: the equal float
    assert type(ser.roundtrip(Reading(2)).value) is float


@dataclass(frozen=True)
class Reading:
    value: float


@dataclass(frozen=True)
class Stamped:
    at: datetime


def test_datetimes_keep_their_offset_and_an_offset_json_cannot_hold_is_refused():
    from datetime import timedelta

    ser = Serialization()
    ser.register(Stamped, "s.Stamped")
    plus2 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    back = ser.roundtrip(Stamped(plus2))
    assert back == Stamped(plus2) and back.at.utcoffset() == timedelta(hours=2)
    assert ser.roundtrip(Stamped(datetime(2026, 5, 1))).at.tzinfo is None  # naive stays naive
    odd = datetime(2026, 5, 1, tzinfo=timezone(timedelta(hours=1, seconds=30)))
    with pytest.raises(UnserializableError):  # RFC 3339 offsets have no seconds
        ser.encode(Stamped(odd))


def test_a_class_msgspec_cannot_decode_is_a_typed_error_both_ways():
    class Opaque2:
        pass

    @dataclass(frozen=True)
    class Holds:
        x: Opaque2

    ser = Serialization()
    ser.register(Holds, "h.Holds")
    with pytest.raises(UnserializableError):
        ser.encode(Holds(Opaque2()))
    with pytest.raises(CorruptPayloadError, match="cannot decode"):
        ser.decode(JSON_SERIALIZER_ID, "h.Holds#1", b'{"x": 1}')


def test_a_serialization_pickles_and_keeps_working():
    import pickle

    ser = Serialization(max_payload_bytes=10_000)
    ser.register(SeatReserved, "seats.SeatReserved")
    stored = ser.encode(sample())  # builds the typed decoder (not pickled)
    copy = pickle.loads(pickle.dumps(ser))
    assert copy.decode(*stored) == sample() and copy.max_payload_bytes == 10_000


def test_register_resolves_string_annotations_while_the_module_is_at_hand():
    # this module uses `from __future__ import annotations`: the annotations are strings
    assert isinstance(Stamped.__dict__["__annotations__"]["at"], (str, type))
    Serialization().register(Stamped, "s.Stamped")
    assert Stamped.__annotations__ == {"at": datetime}
