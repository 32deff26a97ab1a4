"""The snapshot store contract as a shipped test suite (see
:mod:`raysource.testing.journal_contract` for how a backend runs it)."""

from __future__ import annotations

from datetime import UTC, datetime

from raysource.journal.api import StoredSnapshot

T0 = datetime(2026, 3, 4, 5, 6, 7, 654321, tzinfo=UTC)


def snap(pid: str, seq: int, payload: bytes | None = None) -> StoredSnapshot:
    return StoredSnapshot(pid, seq, payload or f'{{"at":{seq}}}'.encode(), "test.State#1", 1, T0)


class SnapshotContract:
    """The snapshot store contract as tests: subclass it in a ``Test*`` class and give it a
    ``backend`` fixture (a :class:`~raysource.testing.contract_backend.ContractBackend`)."""

    async def test_save_load_newest_at_or_below(self, backend):
        s = backend.snapshots()
        pid = backend.pid("snap")
        assert await s.load(pid) is None
        for seq in (10, 20, 30):
            await s.save(snap(pid, seq))
        assert await s.load(pid) == snap(pid, 30)
        assert (await s.load(pid, 29)).sequence_nr == 20
        assert (await s.load(pid, 20)).sequence_nr == 20
        assert await s.load(pid, 9) is None
        # the next-older one, when the newest cannot be decoded
        newest = await s.load(pid)
        assert (await s.load(pid, newest.sequence_nr - 1)).sequence_nr == 20
        assert await s.load(backend.pid("other")) is None

    async def test_save_replaces_same_sequence_nr(self, backend):
        s = backend.snapshots()
        pid = backend.pid("snap")
        await s.save(snap(pid, 5, b"old"))
        await s.save(snap(pid, 5, b"new"))
        assert (await s.load(pid)).payload == b"new"

    async def test_keep_newest_and_delete(self, backend):
        s = backend.snapshots()
        pid = backend.pid("snap")
        for seq in range(1, 8):
            await s.save(snap(pid, seq * 10))
        await s.keep_newest(pid, 3)
        assert (await s.load(pid)).sequence_nr == 70
        assert (await s.load(pid, 49)) is None
        assert (await s.load(pid, 55)).sequence_nr == 50
        await s.delete(pid, 70)
        await s.delete(pid, 70)  # idempotent
        assert (await s.load(pid)).sequence_nr == 60
        await s.keep_newest(pid, 0)
        assert await s.load(pid) is None
        await s.close()
