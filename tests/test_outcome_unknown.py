"""A write the journal could not confirm (a timeout) may still land later: the caller must hear
"outcome unknown", never "failed" (which invites a retry that runs the command twice), and the
activation stops so the next one recovers whatever the journal ends up holding."""

from __future__ import annotations

import asyncio

import pytest

from raysource.journal.errors import JournalOutcomeUnknownError, PersistFailedError, \
    WriteOutcomeUnknownError
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.core import EntityCore
from raysource.examples.seats import SHOW, GetShow, ReserveSeat
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from unit_guard import no_ray  # noqa: F401


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
    return EntityCore(SHOW, "late", journal, InMemorySnapshotStore(),
                      serialization_for(SHOW, StoreSpec()), writer_id=writer)


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
