"""Retention policies: which events of an aggregate type may be physically deleted.

A policy is set per aggregate type (``AggregateType(retention=...)``) and applied in the
background by a cleaner (the Cassandra one: :mod:`raysource.journal.cassandra.retention`,
``raysource retention run|plan|verify``). The policies are plain data, backend-agnostic:

* :class:`KeepAll` (the default, :data:`KEEP_ALL`): nothing is ever deleted.
* :class:`KeepFromSnapshot` ``(k)``: keep the events after the ``k``-th newest snapshot of each
  aggregate; the events at or below that snapshot's sequence number, and the snapshots older
  than it, are deleted. An aggregate with fewer than ``k`` snapshots keeps everything. Its
  recovery then starts from one of its ``k`` newest snapshots (``k >= 2`` leaves a spare if the
  newest cannot be decoded; with ``SnapshotPolicy(keep=n)`` the runtime itself keeps only ``n``
  snapshots, so ``k`` must not exceed ``n``).

What a cleaner never deletes, whatever the policy (the rules ``tests/test_retention_*`` check):

1. an event above the mark a policy computes (``KeepFromSnapshot``: the ``k``-th newest
   snapshot), nor that snapshot or a newer one: recovery needs them;
2. an event above the journal's acknowledged high-water mark (the mark is clamped to it);
3. an event at or above a sequence number a projection parked (it will replay it by
   persistence id), and a tag row at or after the smallest offset any projection stored (a
   projection that lags still reads every tag row it has not read; one that never stored an
   offset blocks all tag-row deletion);
4. the writer guard's rows (``writer_fence``, ``writer_epochs``) and the metadata row: they are
   tiny, and the fence and the chain of a live writer must never disappear under it;
5. anything before the logical ``deleted_to`` mark is durable: the mark is written first, so
   every reader skips what the physical delete removes, whether it ran or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysource.journal.errors import ConfigError

__all__ = ["RetentionPolicy", "KeepAll", "KeepFromSnapshot", "KEEP_ALL"]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Base of the retention policies (see the module docstring)."""

    @property
    def deletes(self) -> bool:
        """Whether this policy ever deletes anything."""
        return False

    def describe(self) -> str:
        return "keep everything"


@dataclass(frozen=True, slots=True)
class KeepAll(RetentionPolicy):
    """Never delete (the default)."""


@dataclass(frozen=True, slots=True)
class KeepFromSnapshot(RetentionPolicy):
    """Keep only the events after the ``k``-th newest snapshot (and the ``k`` newest
    snapshots); delete the rest."""

    k: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigError(f"KeepFromSnapshot: k must be an int >= 1, got {self.k!r}")

    @property
    def deletes(self) -> bool:
        return True

    def describe(self) -> str:
        return f"keep events after the {_ordinal(self.k)} newest snapshot"

    def mark(self, snapshot_seqs_newest_first: list[int]) -> int:
        """The sequence number at or below which events may go (0: nothing), given the
        aggregate's snapshot sequence numbers, newest first."""
        if len(snapshot_seqs_newest_first) < self.k:
            return 0
        return snapshot_seqs_newest_first[self.k - 1]


def _ordinal(n: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")
    return f"{n}{suffix}"


KEEP_ALL = KeepAll()
