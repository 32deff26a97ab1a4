"""The retention cleaner of the Cassandra journal: applies an aggregate type's
:class:`~raysource.journal.retention.RetentionPolicy` by physically deleting events (and the tag
rows that follow them), bounded, paced and resumable.

One :meth:`RetentionCleaner.run` walks the aggregates of one type that have snapshots (the
``snapshots`` table in token order, from where the previous run stopped) and, per aggregate:

1. computes the mark ``m``: the policy's mark (``KeepFromSnapshot(k)``: the ``k``-th newest
   snapshot; ``KeepUntilFinal``: the newest snapshot, once it is at or after a final event
   found among the newest ``window`` events and older than the grace), lowered below any
   sequence number a projection parked for it, and clamped to the
   valid log's end (a stable read of ``highest_sequence_nr``);
2. writes the logical ``deleted_to = m`` (``CassandraJournal.delete_to``) **before** any row
   goes: every reader already skips what follows, whether the physical delete runs or not;
3. deletes the rows ``<= m`` partition by partition: a whole-partition delete for a partition
   whose every possible row (its overflow included: ``(p + 2) * partition_size - 1``) is at
   most ``m``, else one range delete ``sequence_nr <= m``: one tombstone per partition;
4. records ``purged_to = m`` for the aggregate, then the walk's position for the type.

Every step is idempotent and computed from durable state, so a cleaner killed anywhere re-does
at most the current aggregate's deletes (the same ranges) on its next run: it deletes neither
more nor less than the policy says. Pacing: at most ``rows_per_s`` rows removed per second
(counted before each delete), and at most ``max_aggregates`` aggregates per run.

Tag rows (:meth:`RetentionCleaner.clean_tags`) follow their events: for every tag, the rows in
buckets below the smallest offset any projection stored whose event lies at or below its
aggregate's ``deleted_to`` are removed, one slice delete per run of consecutive such rows (a
whole-bucket delete when the bucket holds nothing else and is closed).

Never deleted (the rules of ``raysource.journal.retention``): rows above the mark; the
snapshots (the runtime keeps its newest ``SnapshotPolicy.keep``); rows at or above a parked
sequence number; tag rows at or after the smallest projection offset (or any, if a projection
stored no offset yet); the writer guard's ``writer_fence`` and ``writer_epochs`` rows and the
``metadata`` row. Readers stay correct after a prefix is gone: replay starts after
``deleted_to``, and the epoch guard counts the open segment's run on from ``deleted_to`` when
its first rows were removed (``epochs.EpochGuard._run_end``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from raysource.journal.cassandra.journal import _BUCKET_US, CassandraJournal, _now_us
from raysource.journal.cassandra.retention_report import (
    AggregatePlan,
    PartitionDelete,
    RunReport,
    TagReport,
    VerifyReport,
)
from raysource.journal.cassandra.retention_statements import retention_statements
from raysource.journal.cassandra.session import RAW_PROFILE
from raysource.journal.errors import ConfigError, JournalError, JournalUnavailableError
from raysource.journal.retention import KeepFromSnapshot, KeepUntilFinal, RetentionPolicy

__all__ = [
    "RetentionCleaner",
    "AggregatePlan",
    "PartitionDelete",
    "RunReport",
    "TagReport",
    "VerifyReport",
]

_MIN_TOKEN = -(2**63)
_PAGE = 100  # aggregates per read of the snapshots table
_MAX_READER_ROWS = 100_000  # bound on the offset / parked rows read per run
#: ``await hook(step, **info)`` at the cleaner's named steps (tests kill it there)
Hook = Callable[..., Awaitable[None]]


class RetentionCleaner:
    """Applies one aggregate type's policy on a :class:`CassandraJournal`'s keyspace (see the
    module docstring). ``type_name`` is the aggregate type's name (persistence ids
    ``"<type_name>|<entity id>"``)."""

    def __init__(
        self,
        journal: CassandraJournal,
        type_name: str,
        policy: RetentionPolicy,
        *,
        rows_per_s: float | None = None,
        max_aggregates: int | None = None,
        hook: Hook | None = None,
    ) -> None:
        if not type_name or "|" in type_name:
            raise ConfigError(f"invalid aggregate type name {type_name!r}")
        if rows_per_s is not None and rows_per_s <= 0:
            raise ConfigError(f"rows_per_s must be > 0, got {rows_per_s!r}")
        if max_aggregates is not None and max_aggregates < 1:
            raise ConfigError(f"max_aggregates must be >= 1, got {max_aggregates!r}")
        self.j = journal
        self.type_name = type_name
        self.prefix = type_name + "|"
        self.policy = policy
        self.rows_per_s = rows_per_s
        self.max_aggregates = max_aggregates
        self.hook = hook
        self._ps: dict[str, Any] = {}
        self._paced_rows = 0
        self._paced_since = 0.0

    async def _prepare(self) -> dict[str, Any]:
        if not self._ps:
            await self.j._prepare()
            c = self.j.config
            levels = {"write": c.write_consistency, "read": c.read_consistency}
            prepared = {}
            for name, st in retention_statements(c).items():
                try:
                    ps = await self.j.session.prepare(st.cql, consistency_level=levels[st.level])
                except JournalError as exc:
                    if "retention_progress" not in str(exc):
                        raise
                    raise JournalError(
                        f"keyspace {c.keyspace!r} lacks a table the cleaner needs (add "
                        f"retention_progress from `raysource schema`): {exc}"
                    ) from exc
                ps.is_idempotent = st.idempotent
                prepared[name] = ps
            self._ps = prepared
        return self._ps

    async def _hook(self, step: str, **info: Any) -> None:
        if self.hook is not None:
            await self.hook(step, **info)

    # ------------------------------------------------------------------ progress

    async def _progress(self, scope: str, key: str) -> tuple[int, int | None]:
        row = await self.j.session.select_one(
            self._ps["progress_get"], (scope, key), profile=RAW_PROFILE
        )
        if row is None:
            return 0, None
        return int(row[0] or 0), (None if row[1] is None else int(row[1]))

    async def _set_progress(self, scope: str, key: str, purged: int, token: int | None) -> None:
        await self.j.session.execute(
            self._ps["progress_set"], (purged, token, _now_us(), scope, key)
        )

    # ------------------------------------------------------------------ what readers need

    async def _parked(self) -> dict[str, int]:
        """persistence id -> the smallest sequence number a projection parked for it."""
        out: dict[str, int] = {}
        n = 0
        async for _proj, pid, seq in self.j.session.stream(
            self._ps["parked_all"], (), profile=RAW_PROFILE
        ):
            n += 1
            if n > _MAX_READER_ROWS:
                raise ConfigError("more than 100000 parked streams: clean them up first")
            if pid.startswith(self.prefix) and seq is not None:
                out[pid] = min(out.get(pid, seq), seq)
        return out

    async def _offset_limit_us(self) -> int:
        """The smallest tag offset timestamp any projection stored (0 when one stored none:
        it will read from the start). No projection at all: no limit (now)."""
        limit: int | None = None
        n = 0
        async for _proj, _worker, ts in self.j.session.stream(
            self._ps["offsets_all"], (), profile=RAW_PROFILE
        ):
            n += 1
            if n > _MAX_READER_ROWS:
                raise ConfigError("more than 100000 projection offset rows")
            ts = int(ts or 0)
            limit = ts if limit is None else min(limit, ts)
        # never above a tag query's cutoff (rows newer than it may still be landing)
        cutoff = _now_us() - int(self.j.config.eventual_consistency_delay * 1_000_000)
        return cutoff if limit is None else min(limit, cutoff)

    # ------------------------------------------------------------------ planning

    async def plan_aggregate(self, pid: str, parked: dict[str, int]) -> AggregatePlan:
        """The mark and the deletes for ``pid`` (reads only)."""
        await self._prepare()
        purged, resume_at = await self._progress("agg", pid)
        deleted_to = await self._deleted_to(pid)
        plan = AggregatePlan(pid, 0, purged, deleted_to)
        try:
            mark, plan.held_by = await self._policy_mark(pid, deleted_to)
            if mark <= 0:
                return plan
            if pid in parked and parked[pid] - 1 < mark:
                mark, plan.held_by = parked[pid] - 1, f"a projection parked #{parked[pid]}"
            highest = await self.j.highest_sequence_nr(pid)
        except JournalUnavailableError as exc:  # a newer activation is recovering: not now
            plan.held_by = f"skipped: {exc}"
            return plan
        if highest < mark:  # a snapshot beyond the valid log: never trust it for deletion
            mark, plan.held_by = min(mark, purged), f"snapshot beyond the log's end {highest}"
        plan.mark = max(mark, 0)
        if plan.mark > purged:
            plan.deletes = await self._partition_deletes(pid, resume_at or 0, plan.mark, highest)
        return plan

    async def _policy_mark(self, pid: str, deleted_to: int) -> tuple[int, str]:
        """The policy's mark for ``pid`` (0: nothing) and why it is 0 (reads only)."""
        policy, ps = self.policy, self._ps
        if isinstance(policy, KeepFromSnapshot):
            rows = await self.j.session.select_all(
                ps["snap_seqs"], (pid, policy.k), profile=RAW_PROFILE
            )
            return policy.mark([int(r[0]) for r in rows]), ""
        if not isinstance(policy, KeepUntilFinal):
            return 0, ""
        rows = await self.j.session.select_all(ps["snap_seqs"], (pid, 1), profile=RAW_PROFILE)
        newest = int(rows[0][0]) if rows else 0
        highest = await self.j.highest_sequence_nr(pid)
        final_seq, final_at = 0, 0.0
        start = max(deleted_to + 1, highest - policy.window + 1)
        async for e in self.j.replay(pid, start, highest):  # the newest `window` events
            if policy.is_final(e.manifest, self.type_name):
                final_seq, final_at = e.sequence_nr, e.timestamp.timestamp()
        if final_seq == 0 and deleted_to > 0:
            # no final event above the logical mark: a pass of this policy may have written the
            # mark and died before deleting; complete it (no reader reads below it), never more
            # (what follows a purge is kept until another final event is stored)
            return deleted_to, ""
        return policy.mark(newest, final_seq, time.time() - final_at)

    async def _deleted_to(self, pid: str) -> int:
        row = await self.j.session.select_one(self._ps["deleted_to"], (pid,), profile=RAW_PROFILE)
        return int(row[0] or 0) if row is not None else 0

    async def _seq(self, name: str, pid: str, p: int) -> int | None:
        row = await self.j.session.select_one(self._ps[name], (pid, p), profile=RAW_PROFILE)
        return None if row is None else int(row[0])

    async def _partition_deletes(
        self, pid: str, start: int, mark: int, highest: int
    ) -> list[PartitionDelete]:
        """Walk the partitions from ``start`` (every lower one was deleted whole) and plan one
        delete for each that holds a row at or below ``mark``. Driven by the rows, not by the
        configured partition size: a whole-partition delete only where the partition's largest
        row is at most ``mark`` AND the next partition holds a row at or below ``highest``
        (then the log's next group can never land in it again); else a range delete."""
        out: list[PartitionDelete] = []
        p = start
        while True:
            lo = await self._seq("min_in_partition", pid, p)
            if lo is None:
                if p == start:  # deleted whole by a run killed before it recorded so
                    p += 1
                    continue
                return out  # partitions have no holes: the end of the log
            if lo > mark:
                return out
            hi = await self._seq("max_in_partition", pid, p)
            row = await self.j.session.select_one(
                self._ps["count_to"], (pid, p, mark), profile=RAW_PROFILE
            )
            n = int(row[0]) if row is not None else 0
            nxt = await self._seq("min_in_partition", pid, p + 1)
            whole = hi is not None and hi <= mark and nxt is not None and nxt <= highest
            out.append(PartitionDelete(p, "partition" if whole else "range", mark, n))
            if not whole:
                return out  # rows above the mark here (or the log ends here): done
            p += 1

    async def _pids(self, after: int) -> list[tuple[str, int]]:
        rows = await self.j.session.select_all(
            self._ps["snap_pids"], (after, _PAGE), profile=RAW_PROFILE
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    # ------------------------------------------------------------------ the run

    async def run(self, *, dry_run: bool = False) -> RunReport:
        """One bounded pass (see the module docstring). ``dry_run``: the plan, nothing written
        (``raysource retention plan``), walking every aggregate of the type from the start."""
        await self._prepare()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = RunReport(self.type_name, self.policy.describe(), dry_run)
        if not self.policy.deletes:
            report.finished_walk = True
            return report
        parked = await self._parked()
        _, token = (0, None) if dry_run else await self._progress("run", self.type_name)
        after = _MIN_TOKEN if token is None else token
        self._paced_rows, self._paced_since = 0, time.monotonic()
        while True:
            page = await self._pids(after)
            if not page:
                report.finished_walk = True
                if not dry_run:  # the next run walks from the start again
                    await self._set_progress("run", self.type_name, 0, None)
                break
            for pid, tok in page:
                after = tok
                if not pid.startswith(self.prefix):
                    continue
                report.aggregates_seen += 1
                plan = await self.plan_aggregate(pid, parked)
                if plan.held_by.startswith("skipped"):
                    report.skipped.append(plan)
                elif plan.held_by and plan.mark <= plan.purged_to:
                    report.held_count += 1
                    if len(report.held) < 100:
                        report.held.append(plan)
                if plan.mark > plan.purged_to:
                    report.aggregates_cleaned += 1
                    report.plans.append(plan)
                    report.rows_deleted += plan.rows
                    report.tombstones += len(plan.deletes)
                    if not dry_run:
                        await self._apply(plan)
                if not dry_run:
                    await self._set_progress("run", self.type_name, 0, tok)
                if self.max_aggregates is not None and (
                    report.aggregates_seen >= self.max_aggregates
                ):
                    report.cpu_s = time.process_time() - cpu0
                    report.wall_s = time.perf_counter() - wall0
                    return report
        report.cpu_s = time.process_time() - cpu0
        report.wall_s = time.perf_counter() - wall0
        return report

    async def _apply(self, plan: AggregatePlan) -> None:
        pid, mark = plan.persistence_id, plan.mark
        await self._hook("mark.before", pid=pid, mark=mark)
        if plan.deleted_to < mark:
            await self.j.delete_to(pid, mark)
            if await self._deleted_to(pid) < mark:  # clamped: the log is shorter than we read
                raise ConfigError(f"{pid}: deleted_to did not reach {mark}; nothing deleted")
        await self._hook("mark.after", pid=pid, mark=mark)
        resume_at = plan.deletes[0].partition_nr if plan.deletes else 0
        for d in plan.deletes:
            await self._pace(d.rows)
            if d.kind == "partition":
                await self.j.session.execute(self._ps["delete_partition"], (pid, d.partition_nr))
                await self._hook("deleted", pid=pid, partition_nr=d.partition_nr)
                resume_at = d.partition_nr + 1  # every partition below it is gone
                await self._set_progress("agg", pid, plan.purged_to, resume_at)
            else:
                await self.j.session.execute(self._ps["delete_range"], (pid, d.partition_nr, d.to))
                await self._hook("deleted", pid=pid, partition_nr=d.partition_nr)
        await self._set_progress("agg", pid, mark, resume_at)
        await self._hook("progress.after", pid=pid, mark=mark)

    async def _pace(self, rows: int) -> None:
        if self.rows_per_s is None:
            return
        self._paced_rows += rows
        ahead = self._paced_rows / self.rows_per_s - (time.monotonic() - self._paced_since)
        if ahead > 0:
            await asyncio.sleep(ahead)

    # ------------------------------------------------------------------ tag rows

    async def clean_tags(self, *, dry_run: bool = False, max_rows: int = 100_000) -> TagReport:
        """Delete the tag rows of deleted events below every projection's offset (see the
        module docstring); at most ``max_rows`` rows scanned per tag."""
        await self._prepare()
        limit = await self._offset_limit_us()
        report = TagReport(dry_run, offset_limit_us=limit)
        marks: dict[str, int] = {}
        now_bucket = _now_us() // _BUCKET_US
        tags = await self.j.session.select_all(self._ps["tags_all"], (), profile=RAW_PROFILE)
        for tag, first_bucket in tags:
            if first_bucket is None:
                continue
            report.tags += 1
            from_bucket, _ = await self._progress("tag", tag)
            bucket = max(int(first_bucket), from_bucket)
            scanned = 0
            while bucket <= limit // _BUCKET_US and scanned < max_rows:
                kept, n = await self._clean_bucket(tag, bucket, limit, marks, report, now_bucket)
                scanned += n
                if kept and not dry_run:
                    break  # a retained row: later buckets are scanned again next time
                if not dry_run and bucket < limit // _BUCKET_US:
                    await self._set_progress("tag", tag, bucket + 1, None)
                bucket += 1
        return report

    async def _clean_bucket(
        self,
        tag: str,
        bucket: int,
        limit: int,
        marks: dict[str, int],
        report: TagReport,
        now_bucket: int,
    ) -> tuple[bool, int]:
        """Remove the runs of deletable rows of one bucket below ``limit``; returns (whether a
        row is kept, rows scanned)."""
        runs: list[tuple[tuple[int, str, int], tuple[int, str, int], int]] = []
        start: tuple[int, str, int] | None = None
        last: tuple[int, str, int] | None = None
        count = scanned = 0
        kept = False
        async for ts, pid, seq in self.j.session.stream(
            self._ps["tag_rows"], (tag, bucket, limit), profile=RAW_PROFILE
        ):
            scanned += 1
            if pid not in marks:
                marks[pid] = await self._deleted_to(pid)
            key = (int(ts), str(pid), int(seq))
            if seq <= marks[pid]:
                start = start or key
                last, count = key, count + 1
            else:
                kept = True
                if start is not None and last is not None:
                    runs.append((start, last, count))
                start, last, count = None, None, 0
        if start is not None and last is not None:
            runs.append((start, last, count))
        report.rows_scanned += scanned
        whole = not kept and runs and bucket < now_bucket and (bucket + 1) * _BUCKET_US <= limit
        for lo, hi, n in runs:
            report.rows_deleted += n
            if not whole:
                report.tombstones += 1
            if report.dry_run:
                continue
            await self._pace(n)
            if not whole:
                await self.j.session.execute(self._ps["tag_delete_slice"], (tag, bucket, *lo, *hi))
        if whole:
            report.tombstones += 1
            if not report.dry_run:
                await self.j.session.execute(self._ps["tag_delete_bucket"], (tag, bucket))
        return kept, scanned

    # ------------------------------------------------------------------ verify

    async def verify(self, *, max_aggregates: int = 100_000) -> VerifyReport:
        """Prove, for every aggregate of the type the cleaner recorded (up to
        ``max_aggregates``), that no row at or below its ``purged_to`` remains in any partition
        that could hold one, and that its ``deleted_to`` covers ``purged_to``."""
        await self._prepare()
        report = VerifyReport()
        after = _MIN_TOKEN
        while True:
            page = await self._pids(after)
            if not page:
                return report
            for pid, tok in page:
                after = tok
                if not pid.startswith(self.prefix):
                    continue
                if report.aggregates_checked >= max_aggregates:
                    report.truncated = True
                    return report
                report.aggregates_checked += 1
                purged, _ = await self._progress("agg", pid)
                if purged <= 0:
                    continue
                deleted_to = await self._deleted_to(pid)
                if deleted_to < purged:
                    report.violations.append(
                        f"{pid}: deleted_to {deleted_to} below purged_to {purged}"
                    )
                _, resume_at = await self._progress("agg", pid)
                for p in range(0, max(self.j._pn(purged), resume_at or 0) + 1):
                    report.partitions_checked += 1
                    row = await self.j.session.select_one(
                        self._ps["probe_to"], (pid, p, purged), profile=RAW_PROFILE
                    )
                    if row is not None:
                        report.violations.append(
                            f"{pid}: row #{row[0]} in partition {p} is at or below the "
                            f"retention mark {purged}"
                        )
