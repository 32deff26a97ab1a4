"""Inspect and replay (ops/inspect.py, `raysource events|replay`) on a real Cassandra node,
plus pure unit tests of the state diff."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raysource.devnode.net import free_port
from raysource.examples.seats import (
    SHOW,
    CancelReservation,
    CreateShow,
    ReservationCancelled,
    ReserveSeat,
    SeatReserved,
    ShowCreated,
    ShowState,
)
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import ConfigError
from raysource.ops.errors import InvalidRangeError, UnknownAggregateTypeError, UnknownEntityError
from raysource.ops.inspect import diff_states, event_log, load_app, replay_states, resolve_type
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.snapshots.cassandra import CassandraSnapshotStore
from raysource.testing.testkit import AggregateTestKit

ROOT = Path(__file__).resolve().parents[2]

HISTORY = [
    CreateShow(20),
    ReserveSeat("A1", "alice"),
    ReserveSeat("A2", "bob"),
    ReserveSeat("A1", "carol"),  # rejected: no event
    CancelReservation("A1", "alice"),
    ReserveSeat("A1", "carol"),
    ReserveSeat("B3", "dave"),
]
EVENTS = [
    ShowCreated(20),
    SeatReserved("A1", "alice"),
    SeatReserved("A2", "bob"),
    ReservationCancelled("A1", "alice"),
    SeatReserved("A1", "carol"),
    SeatReserved("B3", "dave"),
]
# Snapshots every 2 events, so a replay can start from one.
SHOW_SNAP = dataclasses.replace(SHOW, snapshot=SnapshotPolicy(every_n_events=2, keep=5))


# ---------------------------------------------------------------- pure: the diff


@dataclass(frozen=True)
class Inner:
    n: int = 0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    title: str = ""
    inner: Inner = Inner()
    by_key: dict = field(default_factory=dict)
    items: list = field(default_factory=list)
    flags: frozenset = frozenset()


def test_diff_of_equal_states_is_empty():
    assert diff_states(Outer(by_key={"a": 1}), Outer(by_key={"a": 1})) == []


def test_diff_names_seat_and_customer():
    before = ShowState(20, True, {"A2": "bob"})
    after = ShowState(20, True, {"A2": "bob", "A1": "alice"})
    assert diff_states(before, after) == ["reservations['A1']: <absent> -> 'alice'"]
    assert diff_states(after, before) == ["reservations['A1']: 'alice' -> <absent>"]
    assert diff_states(ShowState(), ShowState(20, True, {})) == [
        "seats: 100 -> 20",
        "created: False -> True",
    ]


def test_diff_nested_dataclass_dict_list_tuple_set():
    before = Outer("x", Inner(1, ("a",)), {"k": Inner(1)}, [1, 2], frozenset({"p"}))
    after = Outer("y", Inner(2, ("a", "b")), {"k": Inner(5), "new": 1}, [1], frozenset({"q"}))
    assert diff_states(before, after) == [
        "title: 'x' -> 'y'",
        "inner.n: 1 -> 2",
        "inner.names[1]: <absent> -> 'b'",
        "by_key['k'].n: 1 -> 5",
        "by_key['new']: <absent> -> 1",
        "items[1]: 2 -> <absent>",
        "flags: removed 'p'",
        "flags: added 'q'",
    ]


def test_diff_of_differing_types_and_scalars():
    assert diff_states(1, 2) == ["state: 1 -> 2"]
    assert diff_states(Inner(1), Outer()) == [f"state: {Inner(1)!r} -> {Outer()!r}"]
    assert diff_states({"a": [1]}, {"a": (1,)}) == ["state['a']: [1] -> (1,)"]
    assert diff_states([1], [1, 2], path="xs") == ["xs[1]: <absent> -> 2"]


# ---------------------------------------------------------------- pure: type lookup


def test_resolve_type_and_load_app(tmp_path, monkeypatch):
    assert resolve_type("show", [SHOW]) is SHOW
    with pytest.raises(UnknownAggregateTypeError, match="known types: show"):
        resolve_type("shows", [SHOW])
    assert load_app() == (SHOW,)
    (tmp_path / "my_shop_app.py").write_text(
        "from raysource.examples.seats import SHOW\nTYPES = [SHOW]\nclass ns:\n    one = SHOW\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo load_app's insert afterwards
    monkeypatch.chdir(tmp_path)  # the application module is found from the working directory
    assert load_app("my_shop_app:TYPES") == (SHOW,)
    assert load_app("my_shop_app:ns.one") == (SHOW,)
    for bad in (
        "nocolon",
        "no_such_module_xyz:A",
        "raysource.examples.seats:NOPE",
        "raysource.examples.seats:DEFAULT_SEATS",
        "my_shop_app:ns",
    ):
        with pytest.raises(ConfigError):
            load_app(bad)


APP = [SHOW, SHOW_SNAP]


# ---------------------------------------------------------------- Cassandra fixtures


@pytest.fixture(scope="module")
def written(cassandra_contact, cassandra_keyspace):
    """Write a history for show "s1" (and "snap1" with snapshots every 2 events) through the
    test kit on Cassandra; returns (config, expected state after each sequence number)."""
    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)

    async def write() -> dict[str, list[ShowState]]:
        journal = await CassandraJournal.connect(config, create_schema=True)
        snaps = await CassandraSnapshotStore.connect(config, create_schema=True)
        states: dict[str, list[ShowState]] = {}
        try:
            for agg, entity in ((SHOW, "s1"), (SHOW_SNAP, "snap1")):
                kit = AggregateTestKit(agg, entity_id=entity, journal=journal, snapshot_store=snaps)
                seen = [agg.initial_state]
                for cmd in HISTORY:
                    result = await kit.arun(cmd)
                    if result.events:
                        seen.append(result.state)
                await kit.aclose()
                states[entity] = seen
        finally:
            await journal.close()
            await snaps.close()
        return states

    return config, asyncio.run(write())


@pytest.fixture
async def journal(written):
    j = await CassandraJournal.connect(written[0])
    yield j
    await j.close()


# ---------------------------------------------------------------- event_log / replay_states


async def test_event_log_returns_events_in_order_and_honours_ranges(journal):
    entries = [e async for e in event_log(journal, None, SHOW, "s1")]
    assert [e.event for e in entries] == EVENTS
    assert [e.sequence_nr for e in entries] == list(range(1, 7))
    assert all(e.tags == frozenset({"show"}) and e.writer_id for e in entries)
    assert entries[1].manifest.startswith("show.SeatReserved#")
    part = [e async for e in event_log(journal, None, SHOW, "s1", from_seq=2, to_seq=4)]
    assert [(e.sequence_nr, e.event) for e in part] == list(zip(range(2, 5), EVENTS[1:4]))
    tail = [e.sequence_nr async for e in event_log(journal, None, SHOW, "s1", 5, 99)]
    assert tail == [5, 6]


@pytest.mark.parametrize(
    "rng, match",
    [
        ((0, None), "--from must be >= 1"),
        ((4, 3), "below --from"),
        ((7, None), "beyond the last event .* 6"),
    ],
)
async def test_event_log_bad_ranges(journal, rng, match):
    with pytest.raises(InvalidRangeError, match=match):
        [e async for e in event_log(journal, None, SHOW, "s1", *rng)]


async def test_unknown_entity(journal):
    with pytest.raises(UnknownEntityError, match="no events for show 'nobody'"):
        [e async for e in event_log(journal, None, SHOW, "nobody")]
    with pytest.raises(UnknownEntityError):
        [s async for s in replay_states(journal, None, SHOW, "nobody")]


async def test_replay_states_equal_the_test_kits_states(journal, written):
    expected = written[1]["s1"]
    for n in range(1, len(EVENTS) + 1):
        steps = [s async for s in replay_states(journal, None, SHOW, "s1", to_seq=n)]
        assert steps[0].is_origin and steps[0].state_after == SHOW.initial_state
        assert [s.sequence_nr for s in steps] == list(range(0, n + 1))
        assert steps[-1].state_after == expected[n]
        for prev, step in zip(steps, steps[1:]):
            assert step.state_before == prev.state_after
    full = [s async for s in replay_states(journal, None, SHOW, "s1")]
    assert full[-1].state_after == expected[-1]
    assert full[2].diff == ("reservations['A1']: <absent> -> 'alice'",)
    assert full[4].diff == ("reservations['A1']: 'alice' -> <absent>",)
    assert full[1].diff == ("seats: 100 -> 20", "created: False -> True")
    with pytest.raises(InvalidRangeError, match="beyond the last event"):
        [s async for s in replay_states(journal, None, SHOW, "s1", to_seq=7)]
    with pytest.raises(InvalidRangeError, match=">= 1"):
        [s async for s in replay_states(journal, None, SHOW, "s1", to_seq=0)]


async def test_replay_from_snapshot(journal, written):
    expected = written[1]["snap1"]
    snaps = await CassandraSnapshotStore.connect(written[0])
    try:
        steps = [
            s
            async for s in replay_states(
                journal, None, SHOW_SNAP, "snap1", to_seq=5, snapshots=snaps
            )
        ]
    finally:
        await snaps.close()
    assert steps[0].from_snapshot and steps[0].sequence_nr == 4
    assert steps[0].state_after == expected[4]
    assert [s.sequence_nr for s in steps] == [4, 5]
    assert steps[-1].state_after == expected[5]
    assert steps[-1].diff == ("reservations['A1']: <absent> -> 'carol'",)


# ---------------------------------------------------------------- the CLI


def cli(written, *args: str, keyspace: str | None = None, contact: str | None = None):
    config = written[0]
    contact = contact or f"{config.contact_points[0]}:{config.port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "raysource.cli",
            *args,
            "--cassandra",
            contact,
            "--keyspace",
            keyspace or config.keyspace,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_events(written):
    r = cli(written, "events", "show", "s1", "--from", "2", "--to", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "2"
    assert "SeatReserved(seat='A1', customer='alice'," in lines[0] and "tags=show" in lines[0]
    assert "SeatReserved(seat='A2', customer='bob'," in lines[1]


def test_cli_replay(written):
    r = cli(written, "replay", "show", "s1", "--to", "5")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "replaying show|s1 from the initial state" in out
    assert "reservations['A1']: <absent> -> 'alice'" in out
    assert "reservations['A1']: 'alice' -> <absent>" in out
    assert "reservations['A1']: <absent> -> 'carol'" in out
    assert "dave" not in out  # event 6 is past --to
    assert out.splitlines()[-1] == f"state at 5: {written[1]['s1'][5]!r}"


def test_cli_replay_from_snapshot_with_app(written):
    r = cli(written, "replay", "show", "snap1", "--snapshot", "--app", "tests.cli.test_inspect:APP")
    assert r.returncode == 0, r.stderr
    assert "from the snapshot at 6" in r.stdout
    assert r.stdout.splitlines()[-1] == f"state at 6: {written[1]['snap1'][6]!r}"


@pytest.mark.parametrize(
    "args, message",
    [
        (("events", "concert", "s1"), "unknown aggregate type 'concert'; known types: show"),
        (("events", "show", "nobody"), "no events for show 'nobody'"),
        (("replay", "show", "nobody"), "no events for show 'nobody'"),
        (("events", "show", "s1", "--from", "9"), "--from 9 is beyond the last event"),
        (("events", "show", "s1", "--from", "3", "--to", "2"), "--to (2) is below --from (3)"),
        (("replay", "show", "s1", "--to", "0"), "argument --to: must be > 0, got 0"),
        (("replay", "show", "s1", "--to", "40"), "--to 40 is beyond the last event"),
        (("events", "show", "s1", "--app", "nope_mod:X"), "cannot import the application module"),
    ],
)
def test_cli_errors_exit_2(written, args, message):
    r = cli(written, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    # one line: "raysource: error: ..." (or "raysource replay: error: ..." from the parser)
    assert re.match(r"raysource( \w+)?: error: ", r.stderr) and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_missing_keyspace_and_unreachable_cassandra(written):
    r = cli(written, "events", "show", "s1", keyspace="no_such_keyspace_xyz")
    assert r.returncode == 2 and "keyspace 'no_such_keyspace_xyz'" in r.stderr, r.stderr
    r = cli(written, "events", "show", "s1", contact=f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "cannot reach Cassandra at 127.0.0.1" in r.stderr, r.stderr
