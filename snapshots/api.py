"""The snapshot store SPI.

A snapshot is an optimisation: the serialized state of one aggregate after a given sequence
number. Recovery loads the newest snapshot it can decode and replays the later events; if the
newest cannot be decoded it asks for the next older one (``load(..., max_sequence_nr=s - 1)``),
and finally falls back to a full replay. Losing every snapshot never loses data.

Contract (checked for every backend by ``tests/contract``):

* ``save`` stores (or replaces) the snapshot at ``(persistence_id, sequence_nr)``.
* ``load`` returns the snapshot with the highest sequence number ``<= max_sequence_nr`` or None.
* ``keep_newest(pid, k)`` deletes all but the newest ``k`` snapshots of ``pid``.
* ``delete(pid, sequence_nr)`` deletes one snapshot (idempotent).
"""

from __future__ import annotations

import abc
import sys

from raysource.journal.api import StoredSnapshot

__all__ = ["SnapshotStore", "StoredSnapshot"]


class SnapshotStore(abc.ABC):
    """Stores serialized snapshots per persistence id. See the module docstring."""

    @abc.abstractmethod
    async def save(self, snapshot: StoredSnapshot) -> None:
        """Durably store ``snapshot`` (replacing one at the same sequence number)."""

    @abc.abstractmethod
    async def load(
        self, persistence_id: str, max_sequence_nr: int = sys.maxsize
    ) -> StoredSnapshot | None:
        """The newest snapshot at or below ``max_sequence_nr``, or None."""

    @abc.abstractmethod
    async def keep_newest(self, persistence_id: str, keep: int) -> None:
        """Delete every snapshot of ``persistence_id`` except the newest ``keep``."""

    @abc.abstractmethod
    async def delete(self, persistence_id: str, sequence_nr: int) -> None:
        """Delete the snapshot at ``sequence_nr`` if present."""

    async def close(self) -> None:
        """Release resources. Idempotent."""
