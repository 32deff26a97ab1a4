"""Property: any sequence of appends (including stale, fenced ones) and deletes replays exactly
what was acknowledged. Many examples in memory, a few on Cassandra."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest
from backends import Backend

from raysource.journal.api import StoredEvent
from raysource.journal.errors import ConcurrentWriteError, InvalidAppendError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def group(pid: str, first: int, n: int, writer: str) -> list[StoredEvent]:
    return [StoredEvent(pid, s, f"{writer}:{s}".encode(), "test.E#1", 1, T0, writer)
            for s in range(first, first + n)]

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("stale"), st.integers(1, 5), st.integers(1, 3)),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(st.just("replay_from"), st.integers(1, 30), st.integers(0, 30)),
    ),
    max_size=25,
)


async def run_ops(backend, ops) -> None:
    j = backend.journal(fencing=True, partition_size=4)
    pid = backend.pid("prop")
    acked: dict[int, bytes] = {}
    highest = deleted = 0
    for op in ops:
        if op[0] == "append":
            evs = group(pid, highest + 1, op[1], writer=f"a{highest}")
            await j.append(evs)
            acked.update({e.sequence_nr: e.payload for e in evs})
            highest += op[1]
        elif op[0] == "stale":  # a stale writer re-using taken numbers must be refused
            first = highest - op[1] + 1
            evs = group(pid, max(first, 1), op[2], writer="stale")
            if first < 1:
                continue
            try:
                await j.append(evs)
            except ConcurrentWriteError:
                pass
            else:
                raise AssertionError("stale append was acknowledged")
        elif op[0] == "delete":
            await j.delete_to(pid, op[1])
            deleted = max(deleted, min(op[1], highest))
        else:
            frm, span = op[1], op[2]
            got = [(e.sequence_nr, e.payload) async for e in j.replay(pid, frm, frm + span)]
            want = [(s, acked[s]) for s in range(max(frm, deleted + 1), min(frm + span, highest) + 1)]
            assert got == want
    got = [(e.sequence_nr, e.payload) async for e in j.replay(pid)]
    assert got == [(s, acked[s]) for s in range(deleted + 1, highest + 1)]
    assert await j.highest_sequence_nr(pid) == highest


def _check(backend, ops) -> None:
    try:
        asyncio.run(run_ops(backend, ops))
    except InvalidAppendError as exc:  # never expected: generated groups are well formed
        raise AssertionError(exc) from exc


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_replay_is_exactly_what_was_acknowledged_memory(ops):
    _check(Backend("memory"), ops)


@pytest.mark.cassandra
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_replay_is_exactly_what_was_acknowledged_cassandra(cassandra_backend_session, ops):
    _check(cassandra_backend_session, ops)
