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
* :class:`KeepUntilFinal` ``(final, grace_s)``: an aggregate whose final event (e.g. ``Closed``)
  is stored, and older than ``grace_s`` seconds, loses its history: every event at or below its
  newest snapshot, provided that snapshot was taken at or after the final event (snapshot on it:
  ``SnapshotPolicy(predicate=lambda s, e: isinstance(e, Closed))``). Recovery then starts from
  that snapshot and replays only what followed it; an aggregate not yet final keeps everything,
  and so do the events stored after a purge until another final event follows them.

What a cleaner never deletes, whatever the policy (the rules ``tests/journal/test_retention_*``
and ``tests/faults/test_retention_faults.py`` check):

1. an event above the mark a policy computes (``KeepFromSnapshot``: the ``k``-th newest
   snapshot; ``KeepUntilFinal``: the newest snapshot, at or after the final event), nor that
   snapshot or a newer one: recovery needs them;
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

__all__ = ["RetentionPolicy", "KeepAll", "KeepFromSnapshot", "KeepUntilFinal", "KEEP_ALL"]


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


@dataclass(frozen=True, slots=True)
class KeepUntilFinal(RetentionPolicy):
    """Keep an aggregate's history until its final event; ``grace_s`` seconds after that
    event, delete every event at or below its newest snapshot taken at or after it (see the
    module docstring).

    ``final``: the final event classes (matched by the name their aggregate type registers
    them under, ``"<type name>.<QualName>"``, or ``register``'s default ``"<module>.<QualName>"``)
    or registered names as strings (for a class registered under a name of its own).
    ``window``: how many of an aggregate's newest events the cleaner reads to find the final
    event (a final event followed by more than ``window`` events is not seen)."""

    final: tuple[type | str, ...]
    grace_s: float = 0.0
    window: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.final, (str, type)) or not isinstance(self.final, tuple):
            raise ConfigError(f"KeepUntilFinal: final must be a tuple, got {self.final!r}")
        if not self.final or not all(isinstance(f, (str, type)) and f for f in self.final):
            raise ConfigError(
                f"KeepUntilFinal: final must name at least one event class, got {self.final!r}"
            )
        if not isinstance(self.grace_s, (int, float)) or isinstance(self.grace_s, bool):
            raise ConfigError(f"KeepUntilFinal: grace_s must be a number, got {self.grace_s!r}")
        if self.grace_s < 0:
            raise ConfigError(f"KeepUntilFinal: grace_s must be >= 0, got {self.grace_s!r}")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ConfigError(f"KeepUntilFinal: window must be an int >= 1, got {self.window!r}")

    @property
    def deletes(self) -> bool:
        return True

    def names(self, type_name: str = "") -> frozenset[str]:
        """The registered names of the final events: a string as given; a class as its
        aggregate type registers it (``"<type_name>.<QualName>"``) or as ``register`` names it
        by default (``"<module>.<QualName>"``)."""
        out: set[str] = set()
        for f in self.final:
            if isinstance(f, str):
                out.add(f)
            else:
                out.add(f"{f.__module__}.{f.__qualname__}")
                if type_name:
                    out.add(f"{type_name}.{f.__qualname__}")
        return frozenset(out)

    def is_final(self, manifest: str, type_name: str = "") -> bool:
        """Whether a stored event's manifest (``name#version`` or ``pickle:name``) names a
        final event of the aggregate type ``type_name``."""
        name = manifest.removeprefix("pickle:").rpartition("#")
        return (name[0] if name[1] else name[2]) in self.names(type_name)

    def describe(self) -> str:
        names = ", ".join(sorted({n.rpartition(".")[2] for n in self.names()}))
        grace = f" + {self.grace_s:g} s" if self.grace_s else ""
        return f"delete history up to the newest snapshot after a final event ({names}){grace}"

    def mark(self, newest_snapshot: int, final_seq: int, final_age_s: float) -> tuple[int, str]:
        """The sequence number at or below which events may go (0: nothing) and why a final
        aggregate is held back (empty otherwise):
        given the newest snapshot's sequence number (0: none), the final event's (0: none seen)
        and its age in seconds."""
        if final_seq <= 0:
            return 0, ""  # not final: nothing to say
        if final_age_s < self.grace_s:
            return 0, f"final event #{final_seq} within its grace ({self.grace_s:g} s)"
        if newest_snapshot < final_seq:
            return 0, f"no snapshot at or after the final event #{final_seq}"
        return newest_snapshot, ""


def _ordinal(n: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")
    return f"{n}{suffix}"


KEEP_ALL = KeepAll()
