"""Many activations claimed together (``CassandraJournal.begin_activations``): a host that
activates many aggregates at once (a first touch of many, a shard moving in, a restart).

Each aggregate still runs the epoch guard's own claim, step for step
(:meth:`~raysource.journal.cassandra.epochs.EpochGuard.claim`: fence hint, CAS, the view below
the new epoch, the record, the confirming fence read); what is shared is only how the requests
travel:

* the claims of a batch run concurrently (at most ``concurrency`` at a time), so their Paxos
  rounds overlap instead of queueing behind a host's recovery semaphore. Cassandra cannot put
  the CAS of two partitions into one Paxos round (a conditional batch must stay in one
  partition), so every aggregate still pays its own round; only a shard-scoped fence
  (``design/fencing.md``, design E) would remove it;
* the plain reads of a claim go out as one ``persistence_id IN (...)`` read per event-loop
  tick for every claim waiting in that tick (:class:`_SharedClaims`, the epoch guard's
  :class:`~raysource.journal.cassandra.epochs.TickReads`):
  the two fence reads (the hint before the CAS, the confirmation after the record), the head
  record below the new epoch (the two newest records of each aggregate; the single read when
  both are newer than the claim), and, for an aggregate without any record, its deletion mark
  and whether its first two partitions hold any row — none: its log ends at 0, exactly what
  the single walk (``CassandraJournal._max_seq``) finds there; any row: the single walk;
* after its claim, each aggregate's deletion mark is read (shared per tick as well), which
  gives it its highest sequence number without another read (0: a log with no event — the
  activation has nothing left to read: no snapshot, no replay).

Why this keeps the claim's guarantees (``design/fencing.md`` §4, L1–L4), per aggregate:

* L1 (one winner per epoch) is the CAS itself, unchanged: only lightweight transactions
  write the fence row, one statement per aggregate.
* The view reads (head record, deletion mark, first partitions) are the same reads as the
  single path's, at the same consistency, sent after the claim's CAS completed; where the
  shared answer could differ from the single one (a third record, a row in the first two
  partitions) the single read is made instead (``tests/runtime/test_bulk_activation.py`` compares
  both views on every kind of log).
* The hint is only the expected value of the CAS: a wrong or stale one makes the CAS refuse
  and retry with the row it returns, as before.
* L2/L4 need the confirming read to *start after* the record write was acknowledged and to be
  a quorum read of that aggregate's fence partition. A shared read is sent from a loop
  callback scheduled after the caller asked, and the caller asks only after its record write
  returned; an ``IN`` read at the read consistency reads each partition at that consistency
  (the coordinator reads every key as its own partition read), with blocking read repair.
* The serial read that resolves an unconfirmed CAS stays a single-partition serial read.
* A claim's own failure (contended, unconfirmed, superseded) is that aggregate's outcome
  only; the others of the batch go on.
* Every activation reads its history after its own claim (its deletion mark too), so the
  prefix it recovers is the one its claim confirmed.

``tests/runtime/test_bulk_activation.py`` plays the fault kit's gates against a batch (a newer claim
between a batched record and its confirmation; a stale writer paused after its write) and
checks the histories.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from raysource.journal.cassandra.epochs import LEGACY_CHAIN, EpochGuard, Fence, TickReads, View

if TYPE_CHECKING:
    from raysource.journal.cassandra.journal import CassandraJournal

__all__ = ["begin_activations"]


class _SharedClaims(EpochGuard):
    """The epoch guard whose plain reads during a claim are shared per loop tick (see the
    module docstring); serial reads stay single-partition serial reads, stable views (readers)
    the single path."""

    def __init__(self, journal: Any) -> None:
        super().__init__(journal)
        self._heads = TickReads(self._grouped("head_many"), missing=None)
        self._marks = TickReads(self._grouped("meta_many"), missing=None)
        self._probes = TickReads(self._grouped("probe_many"), missing=None)

    def _grouped(self, name: str) -> Callable[[list[str]], Awaitable[dict[str, Any]]]:
        async def read(pids: list[str]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {}
            for row in await self.j.session.execute(self.j._ps[name], (pids,)):
                out.setdefault(row[0], []).append(row)
            return out

        return read

    async def fence(self, pid: str, *, serial: bool = False) -> Fence:
        if serial:
            return await super().fence(pid, serial=True)
        return await self.fence_shared(pid)

    async def _fence_many(self, pids: list[str]) -> dict[str, Fence]:
        rows = await self.j.session.execute(self.j._ps["fence_many"], (pids,))
        return {row[0]: (int(row[1]), row[2]) for row in rows if row[1] is not None}

    async def view(
        self,
        pid: str,
        below: int | None = None,
        *,
        bounded: bool = True,
        stable: bool = False,
        wait: bool = True,
    ) -> View:
        if stable or below is None or not bounded:
            return await super().view(pid, below, bounded=bounded, stable=stable, wait=wait)
        records = await self._heads.get(pid) or []
        older = [r for r in records if int(r[1]) < below]
        if older:  # the newest record below the claim (records come newest first)
            head = int(older[0][1])
            chain = tuple((int(e), int(s)) for e, s in older[0][3])
            epoch, start = chain[-1]
            return View(chain, await self._run_end(pid, epoch, start), head)
        if len(records) >= 2:  # both newer than the claim: the older ones are not here
            return await super().view(pid, below)
        # no record below the claim: the log before epochs (epoch 0 rows, if any)
        marks = await self._marks.get(pid)
        deleted_to, hint = (int(marks[0][1] or 0), int(marks[0][2] or 0)) if marks else (0, 0)
        if deleted_to == 0 and hint == 0 and not await self._probes.get(pid):
            return View(LEGACY_CHAIN, 0, 0)  # never written: _max_seq finds 0 here
        return View(LEGACY_CHAIN, await self.j._max_seq(pid), 0)


def _shared(journal: CassandraJournal) -> _SharedClaims:
    guard = getattr(journal, "_bulk_guard", None)
    if guard is None:
        guard = _SharedClaims(journal)
        journal._bulk_guard = guard  # type: ignore[attr-defined]
    return guard


async def begin_activations(
    journal: CassandraJournal, activations: Sequence[tuple[str, str]], concurrency: int
) -> list[BaseException | int | None]:
    """See :meth:`raysource.journal.api.Journal.begin_activations` and the module docstring."""
    if journal.guard != "epoch":  # nothing to claim; the highest is read as usual
        return [None] * len(activations)
    await journal._prepare()
    guard = _shared(journal)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(pid: str, writer: str) -> int | None:
        async with gate:
            claim = await guard.claim(pid, writer)
        journal._keep(claim)  # from here on this process's reads follow the claim
        try:  # read after the claim: highest_sequence_nr under it, without another read
            marks = await guard._marks.get(pid)
        except Exception:  # noqa: BLE001 - a read only: the activation reads it itself
            return None
        return max(claim.own_view().h, int(marks[0][1] or 0) if marks else 0)

    outcomes = await asyncio.gather(*(one(p, w) for p, w in activations), return_exceptions=True)
    return list(outcomes)
