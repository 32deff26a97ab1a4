"""The pure aggregate API: effects, validation, identity, type registration."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import (
    AggregateType,
    NoOp,
    Persist,
    Reject,
    Reply,
    SnapshotPolicy,
    none,
    persist,
    reject,
    reply,
    split_persistence_id,
    unknown_command,
)
from raysource.runtime.errors import UnknownCommandError

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Add:
    n: int


@dataclass(frozen=True)
class Added:
    n: int


@dataclass(frozen=True)
class Counter:
    total: int = 0


def decide(state: Counter, cmd: object):
    match cmd:
        case Add(n=n):
            return persist(Added(n), reply=lambda s: s.total)
        case _:
            unknown_command(cmd, "counter")


def apply(state: Counter, ev: Added) -> Counter:
    return Counter(state.total + ev.n)


COUNTER = AggregateType("counter", Counter(), decide, apply, events=(Added,), commands=(Add,))


def test_effect_builders():
    side = lambda s: None  # noqa: E731
    eff = persist(Added(1), Added(2), reply="ok", then=side)
    assert eff == Persist((Added(1), Added(2)), "ok", (side,))
    assert eff.reply_for(Counter(3)) == "ok"
    assert persist(Added(1), reply=lambda s: s.total).reply_for(Counter(7)) == 7
    assert persist(Added(1), then=[side, side]).then == (side, side)
    assert reply(5) == Reply(5)
    assert reject("no") == Reject("no")
    assert none() == NoOp()
    # a class as reply value is a value, not a reply function
    assert persist(Added(1), reply=Added).reply_for(Counter()) is Added


def test_runtime_core_modules_import_neither_ray_nor_cassandra():
    code = (
        "import sys, raysource.runtime.aggregate, raysource.runtime.core, "
        "raysource.runtime.ordering, raysource.testing.testkit, raysource.examples.seats; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'cassandra')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_handler_and_apply():
    eff = COUNTER.command_handler(Counter(), Add(2))
    assert isinstance(eff, Persist)
    assert COUNTER.apply(Counter(), eff.events) == Counter(2)
    with pytest.raises(UnknownCommandError, match="counter"):
        COUNTER.command_handler(Counter(), "what")


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a|b", "é", "x" * 101, None])
def test_invalid_type_names(name):
    with pytest.raises(ConfigError):
        AggregateType(name, Counter(), decide, apply)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"placement": "nowhere"},
        {"idle_timeout_s": 0},
        {"number_of_shards": 0},
        {"snapshot": "often"},
        {"events": (Added(1),)},
    ],
)
def test_invalid_settings(kwargs):
    with pytest.raises(ConfigError):
        AggregateType("counter", Counter(), decide, apply, **kwargs)


@pytest.mark.parametrize("kwargs", [{"every_n_events": 0}, {"keep": 0}])
def test_invalid_snapshot_policy(kwargs):
    with pytest.raises(ConfigError):
        SnapshotPolicy(**kwargs)


def test_snapshot_policy_crossing():
    p = SnapshotPolicy(every_n_events=10)
    assert p.enabled
    assert not p.crossed(0, 9)
    assert p.crossed(9, 10)
    assert p.crossed(8, 25)
    assert not p.crossed(10, 19)
    assert not SnapshotPolicy().enabled
    assert not SnapshotPolicy().crossed(0, 1000)


def test_persistence_id_and_entity_id_validation():
    assert COUNTER.persistence_id("42") == "counter|42"
    assert COUNTER.persistence_id("a|b") == "counter|a|b"
    assert split_persistence_id("counter|a|b") == ("counter", "a|b")
    assert COUNTER.persistence_id("x" * 512)
    for bad in ["", "a\nb", "a\x00", "x" * 513, None, 5]:
        with pytest.raises(ConfigError):
            COUNTER.persistence_id(bad)
    with pytest.raises(ConfigError):
        split_persistence_id("nope")


def test_tags():
    assert COUNTER.tags_for(Added(1)) == frozenset()
    tagged = AggregateType("c", Counter(), decide, apply, tagger=lambda e: ["a", "b"])
    assert tagged.tags_for(Added(1)) == frozenset({"a", "b"})


def test_register_types_uses_stable_names_and_is_idempotent():
    ser = Serialization()
    ser.register(Add, "my.Add")  # the user's own name is kept
    COUNTER.register_types(ser)
    COUNTER.register_types(ser)
    assert ser.manifest_of(Added) == "counter.Added#1"
    assert ser.manifest_of(Counter) == "counter.Counter#1"  # the state type, from initial_state
    assert ser.manifest_of(Add) == "my.Add#1"
    assert ser.roundtrip(Counter(3)) == Counter(3)
