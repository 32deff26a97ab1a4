"""Issue 10, defect 2: a recovering activation must never interleave with a live one.

Before the fix ``EntityCore._recover`` replayed, *then* read ``highest_sequence_nr`` and took
``seq = max(seq, highest)`` without applying the events in between. An old activation that
appended #2 (bob gets seat A2) while the new one was between its replay and that read left the
new one believing #2 was its own past: it then reserved A2 for carol at #3, no conflict, guard
on. Seat A2 was booked twice in the journal.

A second writer is injected at each step of the recovery (in-memory journal with a hook; the
defect lives in the core). Checked every time: every stored reservation was valid against the
journal before it (no seat booked twice), the new activation's state equals the fold of the
journal when it is alive, and a command the new activation was fenced on is absent.
"""

from __future__ import annotations

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, GetShow, ReserveSeat, SeatReserved
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import AggregateStoppedError, CommandRejected
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

SER = serialization_for(SHOW, StoreSpec())
EID = "race"
PID = SHOW.persistence_id(EID)


class HookedJournal(InMemoryJournal):
    """Runs ``hook`` once, at ``point``: "replay-end" (the replay returned its last event, the
    iterator has not finished yet), "after-highest" (highest_sequence_nr has been read),
    "before-highest", or "replay-start"."""

    def __init__(self) -> None:
        super().__init__()
        self.point: str | None = None
        self.hook = None
        self.fired = False

    async def _fire(self, point: str) -> None:
        if self.point == point and not self.fired and self.hook is not None:
            self.fired = True
            await self.hook()

    async def replay(self, persistence_id, from_sequence_nr=1, to_sequence_nr=None):  # noqa: ANN001
        await self._fire("replay-start")
        async for event in super().replay(persistence_id, from_sequence_nr, to_sequence_nr):
            yield event
        await self._fire("replay-end")

    async def highest_sequence_nr(self, persistence_id):  # noqa: ANN001
        await self._fire("before-highest")
        highest = await super().highest_sequence_nr(persistence_id)
        await self._fire("after-highest")
        return highest


def _core(journal, writer: str) -> EntityCore:
    return EntityCore(SHOW, EID, journal, InMemorySnapshotStore(), SER, writer_id=writer)


def journal_fold(journal: InMemoryJournal):
    """The state the journal holds, and every reservation that was invalid when stored."""
    state, invalid = SHOW.initial_state, []
    for stored in journal.events(PID):
        event = SER.decode(stored.serializer_id, stored.manifest, stored.payload)
        if isinstance(event, SeatReserved) and state.holder(event.seat) is not None:
            invalid.append((stored.sequence_nr, stored.writer_id, event))
        state = SHOW.event_handler(state, event)
    return state, invalid


@pytest.mark.parametrize("point", ["replay-end", "replay-start", "before-highest", "after-highest"])
async def test_a_second_writer_during_recovery_is_fenced_or_seen(point) -> None:
    journal = HookedJournal()
    old = _core(journal, "old")
    await old.handle(ReserveSeat("A1", "alice"))  # #1

    async def old_activation_writes() -> None:  # the old activation is still alive
        await old.handle(ReserveSeat("A2", "bob"))  # #2

    journal.point, journal.hook = point, old_activation_writes
    new = _core(journal, "new")
    try:
        outcome = await new.handle(ReserveSeat("A2", "carol"))
    except (AggregateStoppedError, CommandRejected) as exc:
        outcome = exc
    assert journal.fired

    state, invalid = journal_fold(journal)
    assert invalid == [], f"seat booked twice at {point}: {invalid}"
    assert state.holder("A2") == "bob"
    assert not isinstance(outcome, SeatReserved), outcome  # carol never got A2
    holders = [
        SER.decode(e.serializer_id, e.manifest, e.payload).customer for e in journal.events(PID)
    ]
    assert "carol" not in holders  # a fenced command is absent
    if not new.stopped:  # a live activation holds exactly the journal's state
        assert (await new.handle(GetShow())) == state and new.sequence_nr == len(holders)
    await new.stop()
    await old.stop()

    fresh = _core(journal, "fresh")  # the truth, recovered
    assert (await fresh.handle(GetShow())) == state
    await fresh.stop()


async def test_recovery_replays_every_number_up_to_the_highest_it_read() -> None:
    """The replay is bounded by the highest read before it: events appended after that read
    are not half-taken (their numbers are left to the fencing guard)."""
    journal = HookedJournal()
    old = _core(journal, "old")
    for seat in ("A1", "A2", "A3"):
        await old.handle(ReserveSeat(seat, "x"))

    async def append_more() -> None:
        await old.handle(ReserveSeat("A4", "y"))

    journal.point, journal.hook = "replay-end", append_more
    new = _core(journal, "new")
    stats = await new.start()
    assert stats.sequence_nr == new.sequence_nr
    state, _ = journal_fold(journal)
    # what the new activation holds is exactly the fold of the numbers it claims
    prefix = SHOW.initial_state
    for stored in journal.events(PID)[: new.sequence_nr]:
        prefix = SHOW.event_handler(
            prefix, SER.decode(stored.serializer_id, stored.manifest, stored.payload)
        )
    assert new.state == prefix
    await new.stop()
    await old.stop()
