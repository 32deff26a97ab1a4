"""What the retention cleaner (:mod:`raysource.journal.cassandra.retention`) reports: the plan
per aggregate and partition (rows, tombstones), a pass over a type, a pass over the tag rows,
and ``verify``'s findings. Plain data with ``lines()`` for the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PartitionDelete", "AggregatePlan", "RunReport", "TagReport", "VerifyReport"]


@dataclass(frozen=True)
class PartitionDelete:
    """One delete of one partition: ``rows`` rows at or below ``to`` (counted before),
    removed with one tombstone, ``kind`` ``"partition"`` or ``"range"``."""

    partition_nr: int
    kind: str
    to: int
    rows: int


@dataclass
class AggregatePlan:
    """What the policy says for one aggregate: the mark, what is purged already, and the
    deletes that take it there (tombstones written = ``len(deletes)``; a tombstone per row
    would be ``rows``)."""

    persistence_id: str
    mark: int
    purged_to: int
    deleted_to: int
    deletes: list[PartitionDelete] = field(default_factory=list)
    held_by: str = ""  # why the mark is lower than the policy's, if it is

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.deletes)


@dataclass
class RunReport:
    """One run (or plan) over one aggregate type."""

    type_name: str
    policy: str
    dry_run: bool
    aggregates_seen: int = 0
    aggregates_cleaned: int = 0
    rows_deleted: int = 0
    tombstones: int = 0
    finished_walk: bool = False
    #: aggregates left for a later run (a newer activation was recovering: no stable read)
    skipped: list[AggregatePlan] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    plans: list[AggregatePlan] = field(default_factory=list)
    #: aggregates the policy would clean but something holds (a grace period, no snapshot
    #: after the final event, a parked stream): how many, and the first 100
    held_count: int = 0
    held: list[AggregatePlan] = field(default_factory=list)

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [
            f"type {self.type_name}: {self.policy}; {self.aggregates_seen} aggregates with "
            f"snapshots seen, {self.aggregates_cleaned} to clean; {verb} {self.rows_deleted} "
            f"rows with {self.tombstones} tombstones (a tombstone per row: "
            f"{self.rows_deleted}); walk {'complete' if self.finished_walk else 'resumes'}"
        ]
        out += [f"  {p.persistence_id}: {p.held_by}" for p in self.skipped]
        if self.held_count:
            out.append(f"  held back: {self.held_count} aggregate(s)")
            out += [f"    {p.persistence_id}: {p.held_by}" for p in self.held]
        for p in self.plans:
            held = f" (held: {p.held_by})" if p.held_by else ""
            out.append(
                f"  {p.persistence_id}: mark {p.mark}, purged to {p.purged_to}, deleted_to "
                f"{p.deleted_to}{held}"
            )
            for d in p.deletes:
                out.append(
                    f"    partition {d.partition_nr}: {d.kind} delete <= {d.to}: {d.rows} rows, "
                    f"1 tombstone"
                )
        return out


@dataclass
class TagReport:
    """One pass over the tag rows."""

    dry_run: bool
    tags: int = 0
    rows_scanned: int = 0
    rows_deleted: int = 0
    tombstones: int = 0
    offset_limit_us: int = 0

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        return [
            f"tag rows: {self.tags} tags, {self.rows_scanned} rows scanned below the smallest "
            f"projection offset; {verb} {self.rows_deleted} rows of deleted events with "
            f"{self.tombstones} tombstones"
        ]


@dataclass
class VerifyReport:
    """``raysource retention verify``: what was checked and what was found."""

    aggregates_checked: int = 0
    partitions_checked: int = 0
    violations: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        head = (
            f"checked {self.aggregates_checked} aggregates, {self.partitions_checked} "
            f"partitions: {'no row below a retention mark' if self.ok else 'VIOLATIONS'}"
        )
        if self.truncated:
            head += " (stopped at the scan bound)"
        return [head, *(f"  {v}" for v in self.violations)]
