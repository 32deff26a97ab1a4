"""The journal contract as a shipped test suite, like Pekko's ``JournalSpec``.

Every journal backend — the in-memory and Cassandra ones here, and a third party's — runs the
same checks. Subclass :class:`JournalContract` in a ``Test*`` class of your own test module
and provide a ``backend`` fixture returning a :class:`ContractBackend`::

    import pytest
    from raysource.testing.journal_contract import JournalContract

    class TestMyJournal(JournalContract):
        @pytest.fixture
        def backend(self):
            return MyBackend()        # journal(), snapshots(), pid(), wait_for_tags()

The tests are coroutines: run them with pytest-asyncio in ``asyncio_mode = "auto"``. A backend
must support what raysource's own do: the guard on and off, tags and ``delete_to``. The
property test runs ``backend.property_examples`` random operation sequences if the backend
says so (a remote store wants fewer), else ``JournalContract.property_examples``.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raysource.journal.api import Journal, StoredEvent, TagOffset
from raysource.journal.errors import (
    ConcurrentWriteError,
    InvalidAppendError,
    JournalUnavailableError,
    OutcomeUnknownError,
)
from raysource.testing.contract_backend import ContractBackend

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def ev(
    pid: str, seq: int, *, writer: str = "w1", tags=(), payload: bytes | None = None, meta=None
) -> StoredEvent:
    return StoredEvent(
        persistence_id=pid,
        sequence_nr=seq,
        payload=payload if payload is not None else f'{{"n":{seq},"w":"{writer}"}}'.encode(),
        manifest="test.Event#1",
        serializer_id=1,
        timestamp=T0 + timedelta(microseconds=seq),
        writer_id=writer,
        tags=frozenset(tags),
        metadata=meta or {},
    )


def group(pid: str, first: int, n: int, **kw) -> list[StoredEvent]:
    return [ev(pid, s, **kw) for s in range(first, first + n)]


async def seqs(j: Journal, pid: str, frm: int = 1, to: int | None = None) -> list[int]:
    return [e.sequence_nr async for e in j.replay(pid, frm, to)]


def prop_group(pid: str, first: int, n: int, writer: str) -> list[StoredEvent]:
    return [
        StoredEvent(pid, s, f"{writer}:{s}".encode(), "test.E#1", 1, T0, writer)
        for s in range(first, first + n)
    ]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("stale"), st.integers(1, 5), st.integers(1, 3)),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(st.just("replay_from"), st.integers(1, 30), st.integers(0, 30)),
    ),
    max_size=25,
)


async def run_ops(backend: ContractBackend, ops: list[tuple]) -> None:
    """Apply ``ops`` (appends, stale appends, deletes, replays) and check every replay
    returns exactly what was acknowledged."""
    j = backend.journal(fencing=True, partition_size=4)
    pid = backend.pid("prop")
    acked: dict[int, bytes] = {}
    highest = deleted = 0
    for op in ops:
        if op[0] == "append":
            evs = prop_group(pid, highest + 1, op[1], writer=f"a{highest}")
            await j.append(evs)
            acked.update({e.sequence_nr: e.payload for e in evs})
            highest += op[1]
        elif op[0] == "stale":  # a stale writer re-using taken numbers must be refused
            first = highest - op[1] + 1
            evs = prop_group(pid, max(first, 1), op[2], writer="stale")
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
            first, last = max(frm, deleted + 1), min(frm + span, highest)
            want = [(s, acked[s]) for s in range(first, last + 1)]
            assert got == want
    got = [(e.sequence_nr, e.payload) async for e in j.replay(pid)]
    assert got == [(s, acked[s]) for s in range(deleted + 1, highest + 1)]
    assert await j.highest_sequence_nr(pid) == highest


class JournalContract:
    """The journal contract (see :mod:`raysource.journal.api`) as tests: subclass it in a
    ``Test*`` class and give it a ``backend`` fixture (a :class:`ContractBackend`).
    ``property_examples``: how many random operation sequences the property test runs."""

    property_examples = 150

    def test_replay_is_exactly_what_was_acknowledged(self, backend):
        """Property: any sequence of appends (stale, fenced ones included) and deletes replays
        exactly what was acknowledged."""

        @settings(
            max_examples=getattr(backend, "property_examples", None) or self.property_examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(ops=OPS)
        def check(ops: list[tuple]) -> None:
            try:
                asyncio.run(run_ops(backend, ops))
            except InvalidAppendError as exc:  # never expected: generated groups are valid
                raise AssertionError(exc) from exc

        check()

    async def test_append_and_replay_keep_every_field(self, backend):
        j = backend.journal()
        pid = backend.pid()
        e1 = ev(pid, 1, tags={"a", "b"}, meta={"corr": "x"}, payload=b"\x00\xffbin")
        await j.append([e1])
        await j.append(group(pid, 2, 3))
        got = [e async for e in j.replay(pid)]
        assert got[0] == e1
        assert got == [e1, *group(pid, 2, 3)]
        assert await j.highest_sequence_nr(pid) == 4
        assert await seqs(j, pid, 2, 3) == [2, 3]
        assert await seqs(j, pid, 4) == [4]
        assert await seqs(j, pid, 5) == []
        assert await seqs(j, backend.pid()) == []
        assert await j.highest_sequence_nr(backend.pid()) == 0

    async def test_fencing_conflict_writes_nothing(self, backend):
        j = backend.journal(fencing=True)
        assert j.capabilities.fencing
        pid = backend.pid()
        await j.append(group(pid, 1, 2, writer="A"))
        with pytest.raises(ConcurrentWriteError) as ei:
            await j.append(group(pid, 2, 3, writer="B"))  # 2 taken, 3 and 4 free
        assert ei.value.persistence_id == pid and ei.value.sequence_nr == 2
        with pytest.raises(ConcurrentWriteError):
            await j.append(group(pid, 1, 1, writer="B"))
        assert await j.highest_sequence_nr(pid) == 2
        assert [e.writer_id async for e in j.replay(pid)] == ["A", "A"]
        await j.append(group(pid, 3, 2, writer="A"))  # the rightful writer continues
        assert await seqs(j, pid) == [1, 2, 3, 4]

    @pytest.mark.parametrize("case", ["empty", "mixed", "gap", "zero", "descending", "too_big"])
    async def test_invalid_appends_are_rejected_and_write_nothing(self, backend, case):
        j = backend.journal(partition_size=4)
        pid = backend.pid()
        bad = {
            "empty": [],
            "mixed": [ev(pid, 1), ev(pid + "x", 2)],
            "gap": [ev(pid, 1), ev(pid, 3)],
            "zero": [ev(pid, 0), ev(pid, 1)],
            "descending": [ev(pid, 2), ev(pid, 1)],
            "too_big": group(pid, 1, 5),
        }[case]
        with pytest.raises(InvalidAppendError):
            await j.append(bad)
        assert await j.highest_sequence_nr(pid) == 0
        assert await seqs(j, pid) == []

    async def test_delete_to_is_logical(self, backend):
        j = backend.journal()
        assert j.capabilities.delete
        pid = backend.pid()
        await j.append(group(pid, 1, 5))
        await j.delete_to(pid, 3)
        assert await seqs(j, pid) == [4, 5]
        assert await seqs(j, pid, 2, 4) == [4]
        assert await j.highest_sequence_nr(pid) == 5
        await j.delete_to(pid, 2)  # never moves backwards
        assert await seqs(j, pid) == [4, 5]
        await j.delete_to(pid, 5)
        assert await seqs(j, pid) == []
        assert await j.highest_sequence_nr(pid) == 5
        await j.delete_to(pid, 100)  # clamped: later appends stay visible
        if j.capabilities.fencing:  # deleted numbers are not free again
            with pytest.raises(ConcurrentWriteError):
                await j.append([ev(pid, 5, writer="w2")])
        await j.append([ev(pid, 6)])
        assert await seqs(j, pid) == [6]
        assert await j.highest_sequence_nr(pid) == 6

    async def test_groups_crossing_partitions_replay_in_order(self, backend):
        j = backend.journal(partition_size=3)
        pid = backend.pid()
        sizes = [1, 3, 2, 3, 1, 1, 2, 3, 3, 1]  # several groups cross the nominal boundaries
        seq = 1
        for n in sizes:
            await j.append(group(pid, seq, n))
            seq += n
        total = seq - 1
        assert await j.highest_sequence_nr(pid) == total
        assert await seqs(j, pid) == list(range(1, total + 1))
        for frm in range(1, total + 2, 2):
            for to in (frm, frm + 2, frm + 4, total):
                assert await seqs(j, pid, frm, to) == list(range(frm, min(to, total) + 1))
        await j.delete_to(pid, 7)
        assert await seqs(j, pid) == list(range(8, total + 1))
        assert await j.highest_sequence_nr(pid) == total

    async def test_events_by_tag_resumes_from_offsets(self, backend):
        j = backend.journal()
        tag, other = f"t{random.randrange(10**9)}", f"o{random.randrange(10**9)}"
        pids = [backend.pid("tag") for _ in range(3)]
        expected = []
        for round_ in range(3):
            for pid in pids:
                first = round_ * 2 + 1
                evs = [ev(pid, first, tags={tag}), ev(pid, first + 1, tags={other})]
                await j.append(evs)
                expected.append((pid, first))
        await backend.wait_for_tags()
        got = [te async for te in j.events_by_tag(tag)]
        stored = sorted((t.event.persistence_id, t.event.sequence_nr) for t in got)
        assert stored == sorted(expected)
        assert all(t.tag == tag and tag in t.event.tags for t in got)
        offsets = [t.offset for t in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        # per persistence id, tag order follows sequence order
        for pid in pids:
            mine = [t.event.sequence_nr for t in got if t.event.persistence_id == pid]
            assert mine == sorted(mine)
        # resume from every offset: exactly the rest, in the same order
        for i in (0, 3, len(got) - 1):
            rest = [t async for t in j.events_by_tag(tag, got[i].offset)]
            assert [t.offset for t in rest] == offsets[i + 1 :]
        first4 = [t async for t in j.events_by_tag(tag, limit=4)]
        assert [t.offset for t in first4] == offsets[:4]
        # events appended after a reader's last offset are found when it resumes
        await j.append([ev(pids[0], 7, tags={tag})])
        await backend.wait_for_tags()
        later = [t async for t in j.events_by_tag(tag, offsets[-1])]
        assert [(t.event.persistence_id, t.event.sequence_nr) for t in later] == [(pids[0], 7)]
        assert [t async for t in j.events_by_tag(f"none{random.randrange(10**9)}")] == []
        assert [t async for t in j.events_by_tag(tag, TagOffset.start(), limit=0)] == []

    async def test_racing_writers_with_guard_never_interleave(self, backend):
        """N writers race for the same numbers on one id: exactly one wins each number, the log is
        gap-free, and every stored group is exactly one writer's acknowledged group — or a group
        whose append ended "outcome unknown" (an epoch-fenced writer whose rows the newer
        writer saw), never a mix of writers inside one group."""
        j = backend.journal(fencing=True, partition_size=4)
        pid = backend.pid("race")
        writers, appends_each = 6, 4
        acked: list[tuple[str, int, int]] = []
        unknown: list[tuple[str, int, int]] = []
        conflicts = 0

        async def writer(name: str, rnd: random.Random) -> None:
            nonlocal conflicts
            done = attempt = 0
            while done < appends_each:
                attempt += 1
                me = f"{name}.{attempt}"  # a fenced writer stops: it comes back as a new one
                try:  # an activation announces itself before it reads (the epoch claim)
                    await j.begin_activation(pid, me)
                except (ConcurrentWriteError, JournalUnavailableError):
                    conflicts += 1  # superseded before it started: nothing written
                    await asyncio.sleep(rnd.uniform(0, 0.02))
                    continue
                nxt = await j.highest_sequence_nr(pid) + 1
                n = rnd.randint(1, 3)
                await asyncio.sleep(0)  # let the others read the same highest number
                try:
                    await j.append(group(pid, nxt, n, writer=me))
                except ConcurrentWriteError as exc:
                    assert nxt <= exc.sequence_nr < nxt + n
                    conflicts += 1
                    continue
                except OutcomeUnknownError:
                    unknown.append((me, nxt, n))
                    conflicts += 1
                    await asyncio.sleep(rnd.uniform(0, 0.02))  # fenced: back off, come back
                    continue
                except JournalUnavailableError:  # an epoch claim lost every try: not applied
                    conflicts += 1
                    await asyncio.sleep(rnd.uniform(0, 0.02))
                    continue
                acked.append((me, nxt, n))
                done += 1

        await asyncio.gather(*(writer(f"w{i}", random.Random(i)) for i in range(writers)))
        stored = [e async for e in j.replay(pid)]
        assert [e.sequence_nr for e in stored] == list(range(1, len(stored) + 1))  # gap-free
        by_seq = {e.sequence_nr: e for e in stored}
        for name, first, n in acked:  # every acknowledged group, exactly
            for s in range(first, first + n):
                assert (
                    by_seq[s].writer_id == name
                    and by_seq[s].payload == ev(pid, s, writer=name).payload
                )
        groups = {(name, first): n for name, first, n in acked + unknown}
        s = 1
        while s <= len(stored):  # the log is a sequence of whole groups, one writer each
            name = by_seq[s].writer_id
            size = groups.get((name, s))
            assert size is not None, f"#{s} by {name} starts no group that was appended"
            for k in range(s, s + size):
                assert k in by_seq and by_seq[k].writer_id == name
                assert by_seq[k].payload == ev(pid, k, writer=name).payload
            s += size
        assert sum(n for _, _, n in acked) <= len(stored)
        assert conflicts > 0  # they really raced

    async def test_without_guard_last_write_wins(self, backend):
        """Documents the unguarded mode: a stale writer is not stopped; rows with the same sequence
        number are overwritten (last write wins per row), so two writers' groups can interleave."""
        j = backend.journal(fencing=False)
        assert not j.capabilities.fencing
        pid = backend.pid("noguard")
        await j.append(group(pid, 1, 3, writer="A"))
        await j.append(group(pid, 2, 1, writer="B"))  # stale writer: no error
        got = [(e.sequence_nr, e.writer_id) async for e in j.replay(pid)]
        assert got == [(1, "A"), (2, "B"), (3, "A")]  # interleaved: the hazard the guard prevents
        assert await j.highest_sequence_nr(pid) == 3

        # concurrent racers: every append is acknowledged, one value per number survives
        pid2 = backend.pid("noguard-race")
        results = await asyncio.gather(
            *(j.append(group(pid2, 1, 2, writer=f"w{i}")) for i in range(5)), return_exceptions=True
        )
        assert all(r is None for r in results)
        rows = [e async for e in j.replay(pid2)]
        assert [e.sequence_nr for e in rows] == [1, 2]
        assert {e.writer_id for e in rows} <= {f"w{i}" for i in range(5)}

    async def test_stale_writer_inside_a_crossing_group_is_fenced(self, backend):
        """Numbers in the overflow of a group that crossed a partition boundary are still taken."""
        j = backend.journal(fencing=True, partition_size=4)
        pid = backend.pid("overflow")
        await j.append(group(pid, 1, 1, writer="A"))
        await j.append(group(pid, 2, 4, writer="A"))  # 2..5 crosses the 4/5 boundary
        for first, n in ((5, 1), (4, 2), (5, 3)):
            with pytest.raises(ConcurrentWriteError):
                await j.append(group(pid, first, n, writer="stale"))
        await j.append(group(pid, 6, 2, writer="A"))
        assert [(e.sequence_nr, e.writer_id) async for e in j.replay(pid)] == [
            (s, "A") for s in range(1, 8)
        ]
