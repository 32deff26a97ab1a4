"""More fault schedules of ``design/fencing.md`` §6 (S4, S6, S7, S9, S10, S11), on a real store;
S1, S2, S3, S5 and S8 are in :mod:`raysource.testing.fence_faults`, whose :class:`Writer` and
gates these use. Each returns the :class:`~raysource.testing.fence_history.FenceHistory`,
whose ``problems()`` must be empty for the real build.

Schedules with a ``tag`` record the tag stream's deliveries (read ``delay`` seconds after the
last write, the journal's visibility delay) so that rule H6 is checked too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import JournalError
from raysource.testing.fence_faults import Writer, _event, final_log
from raysource.testing.fence_history import FenceHistory

__all__ = [
    "schedule_s4",
    "schedule_s6",
    "schedule_s7",
    "schedule_s9",
    "schedule_s10",
    "schedule_s11",
    "deliveries",
]

MakeJournal = Callable[[], Journal]


async def deliveries(journal: Journal, tag: str, delay: float) -> list[tuple[int, bytes]]:
    """Every (seq, payload) the tag stream delivers, once the visibility delay has passed."""
    await asyncio.sleep(delay * 1.2 + 0.1)
    return sorted(
        {(t.event.sequence_nr, bytes(t.event.payload)) async for t in journal.events_by_tag(tag)}
    )


async def _finish(
    make: MakeJournal, pid: str, h: FenceHistory, tag: str | None = None, delay: float = 0.0
) -> FenceHistory:
    j = make()
    h.final(await final_log(j, pid))
    if tag:
        h.delivered(await deliveries(j, tag, delay))
    return h


async def _start(w: Writer) -> bool:
    """Activate ``w``; False if its claim was superseded or refused (it starts nothing)."""
    try:
        await w.activate()
        return True
    except JournalError:
        return False


async def schedule_s4(
    make: MakeJournal, pid: str, skew: Callable[[float], Any], ahead_s: float = 10.0
) -> FenceHistory:
    """S4: S3 with the stale writer's clock ``ahead_s`` ahead: its held write of #3 is sent,
    after the new writer acknowledged its own #3, stamped ``ahead_s`` later than now
    (``skew(s)`` moves the stale writer's client timestamps s seconds ahead; ``skew(0)``
    restores them). The hinted-replay half of S4 needs a ring with a replica down (RF=3);
    on one node the skewed late write is the same landing."""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h)
    await old.activate()
    await old.append(2)
    gate = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))
    await gate.reached.wait()
    new = Writer(make(), pid, "E", h)
    await new.activate()
    await new.append(1)
    skew(ahead_s)
    try:
        gate.release()
        await stale
    finally:
        skew(0.0)
    return await _finish(make, pid, h)


async def schedule_s6(make: MakeJournal, pid: str, tag: str, delay: float) -> FenceHistory:
    """S6: a late record. E's record is held; E+1 claims, confirms and acknowledges #3; E's
    record lands (E is superseded: it never starts); E+2 recovers and appends. E is void: no
    row or tag of it is in the log or the tag stream, and E+2 builds on E+1 (H3, H6)."""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h, tag=tag)
    await old.activate()
    await old.append(2)
    e = Writer(make(), pid, "E", h, tag=tag)
    gate = e.gates.hold("record.before")
    late = asyncio.create_task(_start(e))
    await gate.reached.wait()
    e1 = Writer(make(), pid, "E1", h, tag=tag)
    await e1.activate()
    await e1.append(1)
    gate.release()
    assert not await late, "E started although E+1 had claimed after it"
    e2 = Writer(make(), pid, "E2", h, tag=tag)
    await e2.activate()
    await e2.append(1)
    return await _finish(make, pid, h, tag, delay)


async def schedule_s7(
    make: MakeJournal, pid: str, tag: str, delay: float, *, tags_before_confirm: bool = False
) -> FenceHistory:
    """S7: L's #3 lands after M (L+1) read the chain (M's record held); E (M+1) reads L's
    record, so L's #3 is in its view; E+1 claims before E's record is written and adopts M's
    chain, which voids #3. A writer that repairs the tail's tags before confirming its claim
    (``tags_before_confirm``: the broken build) puts #3 into the tag stream although it is
    not in the log (H6); the real order (confirm, then repair) writes no tag for it."""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h, tag=tag)
    await old.activate()
    await old.append(2)
    g_l = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))  # #3, held
    await g_l.reached.wait()
    m = Writer(make(), pid, "M", h, tag=tag)
    g_m = m.gates.hold("record.before")
    m_start = asyncio.create_task(_start(m))  # claims, reads h = 2; its record is held
    await g_m.reached.wait()
    g_l.release()
    await stale  # L's #3 lands; its fence read names M: unknown
    e = Writer(make(), pid, "E", h, tag=tag, tags_before_confirm=tags_before_confirm)
    g_e = e.gates.hold("record.before")
    e_start = asyncio.create_task(_start(e))  # reads L's record: #3 in its view
    await g_e.reached.wait()
    g_m.release()
    assert not await m_start
    e1 = Writer(make(), pid, "E1", h, tag=tag)
    await e1.activate()  # adopts M's chain: #3 of L is void
    await e1.append(1)
    g_e.release()
    assert not await e_start
    return await _finish(make, pid, h, tag, delay)


async def schedule_s9(
    make: MakeJournal, pid: str, tag: str, delay: float, *, repair: int = 2
) -> FenceHistory:
    """S9: two flushes of L in flight (#2, then #3 sent once #2's write was acknowledged)
    both pass their fence reads, and L crashes before either writes its tag rows. The next
    recovery re-writes the tags of its last ``repair`` events: with W = 2 flushes in flight
    it must cover both (H6); ``repair=1`` (only the newest group) leaves #2 out of the tag
    stream. (The entity core has one flush in flight per aggregate, so it repairs one.)"""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h, tag=tag)
    await old.activate()
    await old.append(1)
    g2 = old.gates.hold("append.after_fence", first=2)
    g3 = old.gates.hold("append.after_fence", first=3)
    f2 = asyncio.create_task(old.append(1))  # #2
    await g2.reached.wait()
    old.next_seq = 3
    f3 = asyncio.create_task(old.append(1))  # #3, in flight with #2
    await g3.reached.wait()
    for f in (f2, f3):  # the crash: neither flush writes its tags nor answers
        f.cancel()
    await asyncio.gather(f2, f3, return_exceptions=True)
    new = Writer(make(), pid, "E", h, tag=tag, repair=repair)
    await new.activate()
    await new.append(1)
    return await _finish(make, pid, h, tag, delay)


async def schedule_s10(
    make: MakeJournal, pid: str, land_row: Callable[[Journal, StoredEvent], Awaitable[Any]]
) -> FenceHistory:
    """S10 (partition size 3): L acknowledges #1..#2; its flush #3 is held and its pipelined
    #4 lands in partition 1 (``land_row``: as L's epoch writes it); E recovers to #2 and
    writes the group #3..#5, which crosses into partition 1 but lives in partition 0; L's #3
    is released (fenced). E+1 must recover E's group from the overflow of partition 0, and L's
    #4 in partition 1 (a stale writer starting mid-group in the next partition) stays
    invalid (H1, H3)."""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h)
    await old.activate()
    await old.append(2)
    gate = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))  # #3, held
    await gate.reached.wait()
    ev4 = _event(pid, 4, "L")
    op4 = h.append_started("L", [(4, ev4.payload)])
    op4.sent = True
    await land_row(old.journal, ev4)
    h.append_done(op4, TimeoutError("pipelined flush, never confirmed"))
    new = Writer(make(), pid, "E", h)
    await new.activate()
    await new.append(3)  # #3..#5 in partition 0
    gate.release()
    await stale
    e1 = Writer(make(), pid, "E1", h)
    await e1.activate()
    await e1.append(1)  # #6
    return await _finish(make, pid, h)


async def schedule_s11(make: MakeJournal, pid: str) -> FenceHistory:
    """S11: L acknowledges #1..#2, its #3 is held; E recovers, acknowledges #3..#4 and deletes
    up to #3; L's #3 lands below the deleted-to mark (fenced). E+1 recovers from #4 and
    appends #5; the log from #4 on is whole and nothing acknowledged above the mark is lost."""
    h = FenceHistory()
    old = Writer(make(), pid, "L", h)
    await old.activate()
    await old.append(2)
    gate = old.gates.hold("append.before_w1")
    stale = asyncio.create_task(old.append(1))
    await gate.reached.wait()
    new = Writer(make(), pid, "E", h)
    await new.activate()
    await new.append(2)  # #3..#4
    await new.journal.delete_to(pid, 3)
    gate.release()
    await stale
    e1 = Writer(make(), pid, "E1", h)
    await e1.activate()
    await e1.append(1)
    h.final(await final_log(make(), pid), deleted_to=3)
    return h
