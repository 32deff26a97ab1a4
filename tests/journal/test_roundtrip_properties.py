"""Property tests of the round-trip rule (issue 18): what is written can always be read back.

Hypothesis generates dataclass values with fields of every supported type (nested dataclasses,
optionals, unions, lists, tuples, sets, dicts with str/int/UUID keys, ``Any``, datetime with
and without offsets, date, time, timedelta, Decimal, UUID, enums, Literal, bytes) and, per
field, sometimes a value of another type or a NaN/infinite float. For each value:

* ``encode`` either refuses with ``UnserializableError`` or ``decode(encode(x))`` equals ``x``
  under an oracle written independently of the serializer's comparison (``==`` plus an exact
  type signature, the numeric tower int -> float being the one allowed widening);
* a value whose every field was drawn from its declared type is never refused (the rule
  refuses only what would not read back);
* the same through an aggregate: an event carrying the value is either refused at the caller
  (nothing appended, state unchanged) or stored, and every stored event and snapshot decodes
  back to what the aggregate holds, also after a restart.

Schemas are generated too (``make_dataclass`` with random field types, nested), so the
decoders are built for classes the serializer has never seen. Thousands of values run in CI
(``max_examples`` below; about 10-15 s on 2 cores).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import typing
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st
from seeds import SEED
from unit_guard import no_ray  # noqa: F401

from raysource.journal.errors import UnserializableError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType, SnapshotPolicy, persist
from raysource.testing.testkit import AggregateTestKit


def examples(n: int):  # noqa: ANN201 - a decorator
    """``n`` examples drawn from this run's fresh seed (tests/support/seeds.py: RAYSOURCE_TEST_SEED
    replays a run)."""

    def wrap(test):  # noqa: ANN001, ANN202
        return seed(SEED)(
            settings(
                max_examples=n,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )(test)
        )

    return wrap


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mood(enum.StrEnum):
    CALM = "calm"
    ANGRY = "angry"


@dataclass(frozen=True)
class Leaf:
    name: str
    n: int


@dataclass(frozen=True)
class Everything:
    i: int
    f: float
    s: str
    b: bool
    raw: bytes
    amount: Decimal
    at: dt.datetime
    day: dt.date
    clock: dt.time
    span: dt.timedelta
    key: uuid.UUID
    color: Color
    level: Level
    mood: Mood
    kind: Literal["a", "b"]
    leaf: Leaf
    maybe_leaf: Leaf | None
    maybe_f: float | None
    either: int | str | None
    leaves: list[Leaf]
    ints: tuple[int, ...]
    pair: tuple[int, str]
    tags: frozenset[str]
    by_name: dict[str, Leaf]
    by_int: dict[int, float]
    by_key: dict[uuid.UUID, int]
    anything: Any = None
    extra: list[int] | str = field(default_factory=list)


# --------------------------------------------------------------------------- strategies

INT64 = st.integers(-(2**63), 2**64 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SPECIAL_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -math.nan])
WHOLE_MINUTE_TZ = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
ODD_TZ = st.integers(1, 59).map(lambda s: dt.timezone(dt.timedelta(hours=1, seconds=s)))
DATETIMES = st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), WHOLE_MINUTE_TZ)
TIMES = st.builds(lambda t, tz: t.replace(tzinfo=tz), st.times(), WHOLE_MINUTE_TZ)
JSONISH = st.recursive(
    st.none() | st.booleans() | INT64 | FINITE | st.text(),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=6,
)
LEAVES = st.builds(Leaf, st.text(max_size=8), INT64)

# the valid values of each field of Everything
VALID: dict[str, st.SearchStrategy[Any]] = {
    "i": INT64,
    "f": FINITE,
    "s": st.text(),
    "b": st.booleans(),
    "raw": st.binary(),
    "amount": st.decimals(allow_nan=False),
    "at": DATETIMES,
    "day": st.dates(),
    "clock": TIMES,
    "span": st.timedeltas(),
    "key": st.uuids(),
    "color": st.sampled_from(Color),
    "level": st.sampled_from(Level),
    "mood": st.sampled_from(Mood),
    "kind": st.sampled_from(["a", "b"]),
    "leaf": LEAVES,
    "maybe_leaf": st.none() | LEAVES,
    "maybe_f": st.none() | FINITE,
    "either": st.none() | INT64 | st.text(),
    "leaves": st.lists(LEAVES, max_size=3),
    "ints": st.lists(INT64, max_size=4).map(tuple),
    "pair": st.tuples(INT64, st.text(max_size=5)),
    "tags": st.frozensets(st.text(max_size=5), max_size=3),
    "by_name": st.dictionaries(st.text(max_size=5), LEAVES, max_size=3),
    "by_int": st.dictionaries(INT64, FINITE, max_size=3),
    "by_key": st.dictionaries(st.uuids(), INT64, max_size=3),
    "anything": JSONISH,
    "extra": st.lists(INT64, max_size=3) | st.text(max_size=5),
}

# values that are sometimes of another type, or not representable: the rule decides
WRONG = st.one_of(
    SPECIAL_FLOATS,
    INT64,
    st.integers(min_value=2**64),
    FINITE,
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.binary(max_size=5),
    st.decimals(),
    DATETIMES,
    st.datetimes().map(lambda d: d.replace(tzinfo=dt.timezone(dt.timedelta(seconds=30)))),
    st.builds(lambda t, tz: t.replace(tzinfo=tz), st.times(), ODD_TZ),
    st.uuids(),
    st.sampled_from(Color),
    st.sampled_from(Level),
    st.sampled_from(Mood),
    LEAVES,
    st.lists(INT64, max_size=2),
    st.lists(INT64, max_size=2).map(tuple),
    st.sets(st.integers(0, 9), max_size=2),
    st.frozensets(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), INT64, max_size=2),
    st.text().map(lambda s: s + "\ud800"),
    st.lists(SPECIAL_FLOATS, min_size=1, max_size=2),
)


@st.composite
def everything(draw: st.DrawFn, wrong_rate: float = 0.1) -> tuple[Everything, bool]:
    """An Everything and whether every field was drawn from its declared type (half of the
    values are; in the other half each field is of another type with ``wrong_rate``)."""
    values, valid = {}, True
    if draw(st.booleans()):
        wrong_rate = 0.0
    for name, strategy in VALID.items():
        if draw(st.floats(0, 1)) < wrong_rate:
            values[name] = draw(WRONG)
            valid = False
        else:
            values[name] = draw(strategy)
    return Everything(**values), valid


# --------------------------------------------------------------------------- the oracle


def signature(value: Any) -> Any:
    """The exact shape of ``value``: type names all the way down (int and float merge: the one
    widening the rule allows), written without the serializer's own comparison."""
    t = type(value)
    if t in (int, float):
        return ("number", value)
    if dataclasses.is_dataclass(value):
        return (
            t.__qualname__,
            tuple((f.name, signature(getattr(value, f.name))) for f in dataclasses.fields(value)),
        )
    if t in (list, tuple):
        return (t.__name__, tuple(signature(v) for v in value))
    if t is dict:
        return ("dict", tuple((signature(k), signature(v)) for k, v in value.items()))
    if t in (set, frozenset):
        return (t.__name__, frozenset(value))
    if t in (dt.datetime, dt.time):
        return (t.__name__, value, value.utcoffset())
    return (t.__qualname__, repr(value))


def assert_reads_back(ser: Serialization, value: Any, valid: bool) -> Any:
    try:
        stored = ser.encode(value, persistence_id="p", sequence_nr=1)
    except UnserializableError as refused:
        note(f"refused: {refused}")
        event("refused")
        assert not valid, f"a value of the declared types was refused: {refused}"
        assert refused.persistence_id == "p" and refused.sequence_nr == 1
        return None
    event("read back")
    back = ser.decode(*stored)
    assert back == value
    assert signature(back) == signature(value)
    assert ser.decode(*ser.encode(back)) == back  # and it stays stable
    return back


# --------------------------------------------------------------------------- properties


_SER = Serialization()
_SER.register(Everything, "props.Everything")


@examples(1000)
@given(everything())
def test_every_field_type_reads_back_or_is_refused(drawn: tuple[Everything, bool]) -> None:
    value, valid = drawn
    assert_reads_back(_SER, value, valid)


@examples(300)
@given(st.one_of(JSONISH, SPECIAL_FLOATS, st.lists(FINITE | SPECIAL_FLOATS, max_size=3)))
def test_plain_json_replies_read_back_or_are_refused(value: Any) -> None:
    def finite(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, list):
            return all(map(finite, v))
        if isinstance(v, dict):
            return all(map(finite, v.values()))
        return True

    assert_reads_back(_SER, value, valid=finite(value))


# generated schemas: (annotation, strategy of valid values), nested through make_dataclass
_SCALARS: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, INT64),
    (float, FINITE),
    (str, st.text(max_size=8)),
    (bool, st.booleans()),
    (bytes, st.binary(max_size=8)),
    (Decimal, st.decimals(allow_nan=False)),
    (dt.datetime, DATETIMES),
    (dt.date, st.dates()),
    (uuid.UUID, st.uuids()),
    (Color, st.sampled_from(Color)),
    (Level, st.sampled_from(Level)),
]
_class_ids = iter(range(10**9))


def _compose(kids: st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]):
    def optional(k):
        return (k[0] | None, st.none() | k[1])

    def listed(k):
        return (list[k[0]], st.lists(k[1], max_size=3))

    def tupled(k):
        return (tuple[k[0], ...], st.lists(k[1], max_size=3).map(tuple))

    def mapped(k):
        return (dict[str, k[0]], st.dictionaries(st.text(max_size=4), k[1], max_size=3))

    def nested(ks):
        cls = dataclasses.make_dataclass(
            f"Gen{next(_class_ids)}", [(f"f{i}", k[0]) for i, k in enumerate(ks)], frozen=True
        )
        return (cls, st.builds(cls, *[k[1] for k in ks]))

    return st.one_of(
        kids.map(optional),
        kids.map(listed),
        kids.map(tupled),
        kids.map(mapped),
        st.lists(kids, min_size=1, max_size=3).map(nested),
    )


FIELD_TYPES = st.recursive(st.sampled_from(_SCALARS), _compose, max_leaves=5)


@st.composite
def generated(draw: st.DrawFn) -> tuple[Any, Any, bool]:
    fields = draw(st.lists(FIELD_TYPES, min_size=1, max_size=4))
    cls = dataclasses.make_dataclass(
        f"Top{next(_class_ids)}", [(f"x{i}", f[0]) for i, f in enumerate(fields)], frozen=True
    )
    values, valid = [], True
    for _annotation, strategy in fields:
        if draw(st.floats(0, 1)) < 0.15:
            values.append(draw(WRONG))
            valid = False
        else:
            values.append(draw(strategy))
    return cls, cls(*values), valid


@examples(500)
@given(generated())
def test_generated_schemas_read_back_or_are_refused(drawn: tuple[Any, Any, bool]) -> None:
    cls, value, valid = drawn
    note(f"schema: {typing.get_type_hints(cls)}")
    ser = Serialization()
    ser.register(cls, cls.__name__)
    assert_reads_back(ser, value, valid)


# --------------------------------------------------------------------------- through an aggregate


@dataclass(frozen=True)
class Carried:
    item: Everything


@dataclass(frozen=True)
class Holder:
    items: tuple[Everything, ...] = ()


def _decide(state: Holder, command: Any):
    return persist(Carried(command))


def _evolve(state: Holder, event: Carried) -> Holder:
    return Holder(state.items + (event.item,))


HOLDER = AggregateType(
    name="holder",
    initial_state=Holder(),
    command_handler=_decide,
    event_handler=_evolve,
    events=(Carried,),
    types=(Everything,),
    snapshot=SnapshotPolicy(every_n_events=1, keep=2),
)


@examples(300)
@given(st.lists(everything(wrong_rate=0.03), min_size=1, max_size=3))
def test_events_and_snapshots_read_back_or_the_command_is_refused(drawn) -> None:
    with AggregateTestKit(HOLDER, roundtrip=False) as kit:
        for value, valid in drawn:
            before, seq = kit.state, kit.core.sequence_nr
            result = kit.run(value)
            if result.error is not None:
                assert isinstance(result.error, UnserializableError), result.error
                assert not valid, f"refused a value of the declared types: {result.error}"
                assert kit.state == before and kit.core.sequence_nr == seq
                assert result.events == ()
            else:
                assert result.events == (Carried(value),)
        stored = kit.journal.events("holder|test-1")
        assert len(stored) == len(kit.state.items)
        for snap in kit.snapshot_store.snapshots("holder|test-1"):
            state = kit.serialization.decode(snap.serializer_id, snap.manifest, snap.payload)
            assert state == Holder(kit.state.items[: snap.sequence_nr])
            assert signature(state) == signature(Holder(kit.state.items[: snap.sequence_nr]))
        kit.restart()  # asserts the recovered state equals the live one
