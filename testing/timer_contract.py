"""The timer store contract as a shipped test suite (see
:mod:`raysource.testing.journal_contract` for how a backend runs it; the backend needs a
``timers()`` method)."""

from __future__ import annotations

import dataclasses
import uuid

from raysource.timers.api import TimerRow, bucket_of


def _type() -> str:
    return f"t{uuid.uuid4().hex[:10]}"  # a type name (and so partitions) no other test uses


def row(
    type_name: str,
    shard: int,
    due_ms: int,
    pid: str,
    name: str,
    *,
    bucket_ms: int = 60_000,
    now_ms: int = 0,
    seq: int = 1,
) -> TimerRow:
    return TimerRow(
        type_name, shard, bucket_of(due_ms, now_ms, bucket_ms), due_ms, pid, name, f"{name}@{seq}"
    )


class TimerStoreContract:
    """The timer store contract as tests: subclass it in a ``Test*`` class and give it a
    ``backend`` fixture (a :class:`~raysource.testing.contract_backend.ContractBackend`)."""

    async def test_due_returns_rows_of_a_bucket_due_by_then_in_due_order(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        base = 1000 * b  # the start of bucket 1000
        rows = [row(t, 3, base + d, f"p{d}", "n", bucket_ms=b) for d in (30, 10, 20)]
        await s.upsert(rows)
        got = await s.due(t, 3, 1000, base + 20)
        assert [r.due_ms for r in got] == [base + 10, base + 20]
        assert got[0] == rows[1]
        assert [r.due_ms for r in await s.due(t, 3, 1000, base + b)] == [
            base + 10,
            base + 20,
            base + 30,
        ]
        assert await s.due(t, 3, 1000, base + 20, limit=1) == [rows[1]]
        assert await s.due(t, 4, 1000, base + b) == []  # another shard
        assert await s.due(t, 3, 1001, base + 2 * b) == []  # another bucket

    async def test_upsert_is_idempotent_and_delete_of_a_missing_row_is_a_no_op(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        r = row(t, 0, 5 * b + 1, "p", "hold", bucket_ms=b)
        await s.upsert([r])
        await s.upsert([r])
        assert await s.due(t, 0, 5, 6 * b) == [r]
        await s.delete([r])
        await s.delete([r])
        assert await s.due(t, 0, 5, 6 * b) == []

    async def test_same_name_of_two_aggregates_and_two_names_of_one_are_distinct(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        rows = [
            row(t, 1, 7 * b, "a", "x", bucket_ms=b),
            row(t, 1, 7 * b, "b", "x", bucket_ms=b),
            row(t, 1, 7 * b, "a", "y", bucket_ms=b),
        ]
        await s.upsert(rows)
        assert sorted(await s.due(t, 1, 7, 8 * b), key=lambda r: r.key) == sorted(
            rows, key=lambda r: r.key
        )

    async def test_a_cursor_exists_from_the_first_row_and_only_advance_moves_it(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        assert await s.cursor(t, 2) is None
        await s.upsert([row(t, 2, 40 * b, "p", "n", bucket_ms=b)])
        assert await s.cursor(t, 2) == 40
        await s.upsert([row(t, 2, 50 * b, "p", "m", bucket_ms=b)])  # a later row: unchanged
        assert await s.cursor(t, 2) == 40
        await s.advance(t, 2, 45)
        assert await s.cursor(t, 2) == 45
        assert await s.cursor(t, 3) is None

    async def test_ensure_cursor_creates_it_once_and_rows_never_move_it(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        await s.ensure_cursor(t, 6, 30)
        assert await s.cursor(t, 6) == 30
        await s.ensure_cursor(t, 6, 20)  # exists: unchanged (not even backwards)
        await s.upsert([row(t, 6, 900 * b, "p", "far", bucket_ms=b)])  # a row far ahead
        assert await s.cursor(t, 6) == 30
        await s.advance(t, 6, 31)
        await s.ensure_cursor(t, 6, 25)
        assert await s.cursor(t, 6) == 31
        other = backend.timers()  # another process's store, where the backend shares data
        if await other.cursor(t, 6) is not None:
            await other.ensure_cursor(t, 6, 20)
            assert await s.cursor(t, 6) == 31

    async def test_a_new_id_under_the_same_name_and_due_time_is_a_row_of_its_own(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        old = row(t, 0, 9 * b, "p", "a", bucket_ms=b, seq=1)
        new = row(t, 0, 9 * b, "p", "a", bucket_ms=b, seq=2)
        await s.upsert([old, new])
        await s.delete([old])  # the stale fire's row: the re-schedule's stays
        assert await s.due(t, 0, 9, 10 * b) == [new]

    async def test_a_rows_trace_context_is_kept_and_is_not_part_of_its_key(self, backend):
        s = backend.timers()
        t, b = _type(), s.bucket_ms
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        traced = dataclasses.replace(
            row(t, 1, 4 * b, "p", "a", bucket_ms=b), traceparent=tp, tracestate="k=v"
        )
        plain = row(t, 1, 4 * b + 1, "p", "b", bucket_ms=b)
        await s.upsert([traced, plain])
        assert await s.due(t, 1, 4, 5 * b) == [traced, plain]
        await s.delete([dataclasses.replace(traced, traceparent="", tracestate="")])
        assert await s.due(t, 1, 4, 5 * b) == [plain]  # deleted by its key alone

    def test_bucket_is_never_before_the_write_time(self):
        assert bucket_of(due_ms=10_000, now_ms=500_000, bucket_ms=60_000) == 8
        assert bucket_of(due_ms=900_000, now_ms=500_000, bucket_ms=60_000) == 15
