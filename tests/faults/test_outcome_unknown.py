"""A write the journal could not confirm (a timeout) may still land later: the caller must hear
"outcome unknown", never "failed" (which invites a retry that runs the command twice), and the
activation stops so the next one recovers whatever the journal ends up holding."""

from __future__ import annotations

import asyncio

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, GetShow, ReserveSeat
from raysource.journal.errors import JournalOutcomeUnknownError, JournalUnavailableError
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import PersistFailedError, WriteOutcomeUnknownError
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore


class LateLandingJournal(InMemoryJournal):
    """The next append times out for the caller, then lands ``delay`` seconds later."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay
        self.time_out_next = False
        self.landed = asyncio.Event()

    async def append(self, events):  # noqa: ANN001
        if not self.time_out_next:
            return await super().append(events)
        self.time_out_next = False

        async def land() -> None:
            await asyncio.sleep(self.delay)
            await InMemoryJournal.append(self, events)
            self.landed.set()

        asyncio.get_running_loop().create_task(land())
        raise JournalOutcomeUnknownError("write timed out; it may or may not have been applied")


def _core(journal, writer: str) -> EntityCore:
    return EntityCore(
        SHOW,
        "late",
        journal,
        InMemorySnapshotStore(),
        serialization_for(SHOW, StoreSpec()),
        writer_id=writer,
    )


async def test_unconfirmed_write_is_reported_unknown_and_the_truth_wins() -> None:
    journal = LateLandingJournal()
    core = _core(journal, "w1")
    await core.handle(ReserveSeat("A1", "alice"))
    journal.time_out_next = True
    with pytest.raises(WriteOutcomeUnknownError) as info:
        await core.handle(ReserveSeat("A2", "bob"))
    assert not isinstance(info.value, PersistFailedError)
    assert core.stopped  # no further writes from an activation that does not know its state
    await asyncio.wait_for(journal.landed.wait(), 2)

    fresh = _core(journal, "w2")  # the next activation sees what landed
    state = await fresh.handle(GetShow())
    assert state.holder("A2") == "bob"
    await fresh.stop()


async def test_a_definite_failure_is_still_persist_failed() -> None:
    journal = InMemoryJournal()
    core = _core(journal, "w1")
    journal.fail_next_appends(1)
    with pytest.raises(PersistFailedError):
        await core.handle(ReserveSeat("A1", "alice"))
    assert not core.stopped
    assert (await core.handle(ReserveSeat("A1", "alice"))).seat == "A1"
    await core.stop()


class RereadFails(LateLandingJournal):
    """The append times out (and lands later), and the journal cannot be read meanwhile."""

    reads_fail = False

    async def highest_sequence_nr(self, persistence_id):  # noqa: ANN001
        if self.reads_fail:
            raise JournalUnavailableError("store frozen")
        return await super().highest_sequence_nr(persistence_id)


async def test_a_failed_re_read_after_an_unknown_outcome_is_unknown_not_failed() -> None:
    """Issue 10, defect 4: the re-read that should decide an unconfirmed write fails (the store
    is frozen): the answer is still "unknown" — the write may land, and it does."""
    journal = RereadFails()
    core = _core(journal, "w1")
    await core.handle(ReserveSeat("A1", "alice"))
    journal.time_out_next, journal.reads_fail = True, True
    with pytest.raises(WriteOutcomeUnknownError, match="could not be re-read"):
        await core.handle(ReserveSeat("A2", "bob"))
    assert core.stopped
    journal.reads_fail = False
    await asyncio.wait_for(journal.landed.wait(), 2)
    fresh = _core(journal, "w2")
    assert (await fresh.handle(GetShow())).holder("A2") == "bob"  # it did land
    await fresh.stop()


async def test_a_definite_failure_with_a_failed_re_read_is_still_persist_failed() -> None:
    journal = RereadFails()
    core = _core(journal, "w1")
    await core.handle(ReserveSeat("A1", "alice"))
    journal.fail_next_appends(1)  # refused before anything was written
    journal.reads_fail = True
    with pytest.raises(PersistFailedError):
        await core.handle(ReserveSeat("A2", "bob"))
    assert core.stopped  # it cannot know its state any more
    journal.reads_fail = False
    fresh = _core(journal, "w2")
    assert (await fresh.handle(GetShow())).holder("A2") is None
    await fresh.stop()
