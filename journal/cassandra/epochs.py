"""The epoch-fenced single writer (``CassandraConfig(guard="epoch")``): one Paxos round per
activation instead of one per append.

Tables (``raysource.journal.cassandra.schema``): events keyed ``((persistence_id, partition_nr),
sequence_nr, epoch)``; ``writer_fence`` (persistence id -> current epoch, owner), written ONLY by
lightweight transactions; ``writer_epochs`` (persistence id, epoch -> start, chain), one record
per activation, written once by its owner.

Protocol (the design and its proof sketch: ``design/fencing.md``, design B):

* **Claim** (activation start, :meth:`EpochGuard.claim`): ``INSERT ... IF NOT EXISTS`` (epoch 1)
  or ``UPDATE ... SET epoch = E IF epoch = E-1`` at the serial consistency. Refused: retry with
  the current row. Unconfirmed (timeout, CAS_WRITE_UNKNOWN): a read of the fence at the serial
  consistency completes any proposal in flight; ours if it names our owner, else retry. A claim
  that stays unresolved writes nothing.
* **Recovery view**: the newest epoch record below E (the *head*) gives the chain
  ``[(e_1, s_1), ..., (e_k, s_k)]``; row ``(n, e)`` is valid iff ``e`` is the epoch of the
  segment covering ``n`` (segment i covers ``s_i <= n < s_{i+1}``) and, in the last segment,
  ``n`` lies in the contiguous run of ``e_k``'s rows from ``s_k``. ``h`` = the end of that run.
  Rows of epochs not in the chain are ignored (void or stale activations). No record at all:
  the chain ``[(0, 1)]`` (rows written by the per-append and unguarded modes, and migrated
  rows, are epoch 0; there ``h`` is the largest number, as before epochs).
* **Record**: ``writer_epochs(pid, E, h + 1, chain + [(E, h + 1)])`` at the write consistency,
  then a **confirming** fence read must return ``(E, owner)``. From then on every later claim
  sees the record (its read comes after the record was acknowledged), so the chain up to E is
  permanent. Only now may the activation repair tags and serve commands.
* **Append** (events n..m): a plain single-partition batch at the write consistency (the rows
  carry epoch E: re-sending identical rows is harmless, and no stale row can replace them) —
  sent, with the batches of the host's other aggregates asked for in the same loop tick, as
  one unlogged request whose per-partition parts each stay atomic
  (``raysource.journal.cassandra.shared_writes``; its failure is an unconfirmed batch for
  every aggregate in it),
  then a fence read (at the read consistency) that returns ``(E, owner)``; only then the tag
  rows, then the acknowledgement. A fence read is sent after the caller's batch was
  acknowledged; the reads of one event-loop tick of a host go out as one request for all its
  aggregates (:class:`TickReads`). A fence read naming another
  epoch, an unconfirmed batch or tag write, or a fence read that keeps failing ends the epoch:
  the append raises :class:`~raysource.journal.errors.WriterFencedError` (outcome unknown,
  never "not applied": the next activation may have seen the rows) and the writer must stop.

Why acknowledged events are safe (``design/fencing.md`` §4): the fence read passed after the
batch was acknowledged, so no later claim had completed before it; every later claimant reads
the rows after its claim and so sees them (quorums intersect), which puts its segment start
above them. Late-landing writes of a fenced writer carry their own epoch in the key, so they
can never replace a valid row, and they lie outside every later chain.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raysource.journal.cassandra.session import RAW_PROFILE
from raysource.journal.errors import (
    ConcurrentWriteError,
    InvalidAppendError,
    JournalError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
)

__all__ = ["Claim", "View", "EpochGuard", "segment_epoch", "compact", "check_next", "LEGACY_CHAIN"]

#: The chain of a persistence id without epoch records: every row is epoch 0.
LEGACY_CHAIN: tuple[tuple[int, int], ...] = ((0, 1),)
#: Re-reads of a stable view while a newer epoch holds the fence without a record (~4 s).
_STABLE_TRIES = 8
#: A fence row as read: (epoch, owner); (0, None) when the aggregate was never claimed.
Fence = tuple[int, "uuid.UUID | None"]
_CLAIM_ATTEMPTS = 40
_FENCE_READ_ATTEMPTS = 3
_RECORD_ATTEMPTS = 3
_FENCE_BATCH = 64  # aggregates per shared fence read


def segment_epoch(chain: Sequence[tuple[int, int]], starts: Sequence[int], n: int) -> int | None:
    """The epoch whose segment covers sequence number ``n`` (``starts``: the chain's starts)."""
    i = bisect.bisect_right(starts, n) - 1
    return chain[i][0] if i >= 0 else None


def compact(chain: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``chain`` without empty segments (a segment followed by one with the same start)."""
    out: list[tuple[int, int]] = []
    for epoch, start in chain:
        while out and out[-1][1] >= start:
            out.pop()
        out.append((int(epoch), int(start)))
    return out


@dataclass(frozen=True)
class View:
    """What a reader (or a recovering writer) takes as the valid log of one persistence id:
    the chain of the head record (epoch ``head``; 0 without records) and ``h``, the last
    valid sequence number."""

    chain: tuple[tuple[int, int], ...]
    h: int
    head: int = 0
    starts: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(s for _, s in self.chain))

    def valid(self, n: int, epoch: int) -> bool:
        if self.h < 0:  # no epochs: every row (all epoch 0)
            return epoch == 0
        return n <= self.h and segment_epoch(self.chain, self.starts, n) == epoch


@dataclass
class Claim:
    """One activation's hold on a persistence id: epoch, owner, where its segment starts and
    the next sequence number it may append. ``ended`` once fenced or unconfirmed."""

    persistence_id: str
    writer_id: str
    epoch: int
    owner: uuid.UUID
    start: int
    next_seq: int
    confirmed: bool = False
    ended: bool = False
    #: the confirmed valid log at the claim (chain with this epoch's segment, ``h = start - 1``)
    view: View | None = None
    #: the last number whose write passed its fence read (valid for good)
    acked_seq: int = 0
    #: made by ``begin_activation`` (held until ``end_activation``), not lazily by an append
    activation: bool = False

    def own_view(self) -> View:
        """The valid log as this live activation knows it for good: the confirmed chain and
        its own rows up to the last one that passed a fence read."""
        assert self.view is not None
        return View(self.view.chain, max(self.acked_seq, self.start - 1), self.epoch)


def check_next(pid: str, h: int, first: int) -> None:
    """Refuse an append at ``first`` when the valid log ends at ``h`` (nothing written):
    ``ConcurrentWriteError`` if ``first`` is taken, ``InvalidAppendError`` if it leaves a gap."""
    if first <= h:
        raise ConcurrentWriteError(pid, first)
    if first > h + 1:
        raise InvalidAppendError(
            f"{pid}: the log ends at #{h}; an append at #{first} would leave a gap"
        )


class TickReads:
    """Reads of many aggregates shared by every caller of a journal (a host): :meth:`get`
    waits for a read *sent after* it asked; the keys asked for in one event-loop tick go out as
    ``IN`` requests of up to ``_FENCE_BATCH`` keys (``read_many(keys) -> {key: answer}``), and
    one read answers every caller of the same key waiting for it (``missing`` for a key the
    read did not return). Used for the fence reads here and for the plain reads of bulk claims
    (``raysource.journal.cassandra.bulk_claims``)."""

    def __init__(self, read_many: Callable[[list[str]], Awaitable[dict[str, Any]]], missing: Any):
        self._read_many = read_many
        self._missing = missing
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}
        self._scheduled = False
        self._reads: set[asyncio.Future[None]] = set()  # in flight (kept referenced)

    async def get(self, key: str) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.setdefault(key, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        for i in range(0, len(keys), _FENCE_BATCH):
            read = asyncio.ensure_future(
                self._read({k: pending[k] for k in keys[i : i + _FENCE_BATCH]})
            )
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    async def _read(self, part: dict[str, list[asyncio.Future[Any]]]) -> None:
        try:
            rows = await self._read_many(list(part))
        except BaseException as exc:  # noqa: BLE001 - every waiter gets it
            for futs in part.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
            return
        for key, futs in part.items():
            for f in futs:
                if not f.done():
                    f.set_result(rows.get(key, self._missing))


class EpochGuard:
    """The epoch protocol on a journal's session and prepared statements (``ps``).

    ``hook(step, **info)``: an awaitable test hook called at named steps (see
    ``raysource.testing.fence_faults``); None in production.
    """

    def __init__(self, journal: Any) -> None:
        self.j = journal
        self._reads = TickReads(self._fence_many, missing=(0, None))

    # ------------------------------------------------------------------ reads

    async def fence(self, pid: str, *, serial: bool = False) -> Fence:
        """The fence row (epoch 0 if none), at the read or the serial consistency."""
        name = "fence_get_serial" if serial else "fence_get"
        # plain tuple rows: named rows build a namedtuple class per response
        row = await self.j.session.select_one(self.j._ps[name], (pid,), profile=RAW_PROFILE)
        if row is None or row[0] is None:
            return 0, None
        owner: uuid.UUID | None = row[1]
        return int(row[0]), owner

    async def fence_shared(self, pid: str) -> Fence:
        """A fence read sent after this call, shared with every caller of this journal waiting
        in the same loop tick (one request for many aggregates)."""
        fence: Fence = await self._reads.get(pid)
        return fence

    async def _fence_many(self, pids: list[str]) -> dict[str, Fence]:
        if len(pids) == 1:
            return {pids[0]: await self.fence(pids[0])}
        rows = await self.j.session.execute(self.j._ps["fence_many"], (pids,), profile=RAW_PROFILE)
        return {row[0]: (int(row[1]), row[2]) for row in rows if row[1] is not None}

    async def head(
        self, pid: str, below: int | None = None
    ) -> tuple[int, tuple[tuple[int, int], ...]]:
        """(epoch, chain) of the newest epoch record (below ``below``), or (0, LEGACY_CHAIN)."""
        if below is None:
            row = await self.j.session.select_one(self.j._ps["head"], (pid,))
        else:
            row = await self.j.session.select_one(self.j._ps["head_below"], (pid, below))
        if row is None:
            return 0, LEGACY_CHAIN
        return int(row[0]), tuple((int(e), int(s)) for e, s in row[2])

    async def view(
        self,
        pid: str,
        below: int | None = None,
        *,
        bounded: bool = True,
        stable: bool = False,
        wait: bool = True,
    ) -> View:
        """The valid log's chain and end (see the module docstring). Without epoch records
        every row is valid; then ``h`` is the largest number, or, unless ``bounded``, -1
        (unknown: a replay walks the partitions as before epochs).

        ``stable`` (readers that are not the writer): after the rows were read, a fence read
        must name the head record's epoch — then every later claim reads after this read and
        sees the same chain and run. If a newer epoch holds the fence, the head record may be
        void (superseded before it was confirmed: its closed segments may disagree with the
        newer activation's chain, second hostile review) or a newer activation is recovering:
        the view is read again until its record is there (a few seconds, the time of a
        recovery); if it is still missing, ``JournalUnavailableError`` (nothing returned that
        might not stay valid; the next activation of the aggregate writes the record).
        ``wait=False``: fail at once instead of reading again."""
        attempt = 0
        while True:
            head, chain = await self.head(pid, below)
            epoch, start = chain[-1]
            if epoch == 0 and head == 0:
                h = await self.j._max_seq(pid) if bounded else -1  # no epochs: every row
            else:
                h = await self._run_end(pid, epoch, start)
            if not stable:
                return View(chain, h, head)
            fenced, _owner = await self.fence(pid)
            if fenced == head:
                return View(chain, h, head)
            if attempt >= _STABLE_TRIES or not wait:
                raise JournalUnavailableError(
                    f"{pid}: epoch {fenced} holds the fence but its record is not written "
                    f"(newest record: epoch {head}): a newer activation is recovering, or "
                    f"stopped before it recorded its view; read again later"
                )
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            attempt += 1

    async def _run_end(self, pid: str, epoch: int, start: int) -> int:
        """The last number of the contiguous run of ``epoch``'s rows from ``start``
        (``start - 1`` if there is none). The retention cleaner deletes rows only at or below
        the durable ``deleted_to`` mark, which lies inside the valid log: when the row at
        ``start`` is gone and the mark covers it, the run is counted on from the mark."""
        h = await self._run_from(pid, epoch, start)
        if h < start:
            floor = (await self.j._meta(pid))[0]
            if floor >= start:
                h = await self._run_from(pid, epoch, floor + 1)
        return h

    async def _run_from(self, pid: str, epoch: int, start: int) -> int:
        pn = self.j._pn
        p = max(0, pn(start) - 1)
        mine: set[int] = set()
        while True:
            found = False
            async for n, e in self.j.session.stream(self.j._ps["run_scan"], (pid, p, start)):
                if (e or 0) == epoch:
                    mine.add(n)
                    found = True
            if not found and p >= pn(start):
                break
            p += 1
        h = start - 1
        while h + 1 in mine:
            h += 1
        return h

    # ------------------------------------------------------------------ claim

    async def claim(self, pid: str, writer_id: str, *, expect_next: int | None = None) -> Claim:
        """Claim a new epoch, read the chain, write and confirm this epoch's record.

        ``expect_next``: the first number the caller will append (a lazy claim at an append);
        if the valid log does not end right before it, ``ConcurrentWriteError`` (nothing
        written but the claim). Raises ``JournalUnavailableError`` if the claim could not be
        resolved (nothing written), ``ConcurrentWriteError`` if a newer claim superseded this
        one before it was confirmed.
        """
        owner = uuid.uuid4()
        await self.j._hook("claim.before", pid=pid, owner=owner)
        epoch = await self._cas(pid, owner)
        await self.j._hook("claim.after", pid=pid, epoch=epoch, owner=owner)
        view = await self.view(pid, below=epoch)
        start = view.h + 1
        chain = compact([*view.chain, (epoch, start)])
        await self.j._hook("record.before", pid=pid, epoch=epoch, start=start)
        # The record is written even when the caller is refused below (a lazy claim on a
        # stale number): a claimed epoch without a record would leave the fence ahead of the
        # newest record, and stable readers would stop before the open segment until the next
        # activation. The refused epoch's segment stays empty.
        try:
            await self._write_record(pid, epoch, start, chain, owner, writer_id)
        except JournalError as exc:
            raise JournalUnavailableError(
                f"{pid}: the record of epoch {epoch} was not confirmed; the activation does "
                f"not start (none of its events were written): {exc}"
            ) from exc
        if expect_next is not None:
            check_next(pid, view.h, expect_next)
        await self.j._hook("record.after", pid=pid, epoch=epoch, start=start)
        got = await self._fence_retrying(pid)
        if got != (epoch, owner):
            raise ConcurrentWriteError(
                pid,
                start,
                f"{pid}: epoch {epoch} was superseded by epoch {got[0]} before it was confirmed",
            )
        return Claim(
            pid,
            writer_id,
            epoch,
            owner,
            start,
            start,
            confirmed=True,
            view=View(tuple(chain), start - 1, epoch),
            acked_seq=start - 1,
        )

    async def _write_record(
        self,
        pid: str,
        epoch: int,
        start: int,
        chain: list[tuple[int, int]],
        owner: uuid.UUID,
        writer_id: str,
    ) -> None:
        """The epoch record, sent up to ``_RECORD_ATTEMPTS`` times (the same row each time: a
        re-send is harmless). A claim whose record is never written leaves the fence ahead of
        the newest record: stable readers then fail until the next activation writes its
        own record (its claim reads the chain below it, without waiting for the fence)."""
        for attempt in range(_RECORD_ATTEMPTS):
            try:
                await self.j.session.execute(
                    self.j._ps["record"], (pid, epoch, start, chain, owner, writer_id)
                )
                return
            except JournalError:
                if attempt + 1 == _RECORD_ATTEMPTS:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)

    async def _cas(self, pid: str, owner: uuid.UUID) -> int:
        s, ps = self.j.session, self.j._ps
        current, _ = await self.fence(pid)  # a hint for the expected value
        for attempt in range(_CLAIM_ATTEMPTS):
            want = current + 1
            try:
                if current == 0:
                    rows = await s.execute(ps["fence_first"], (pid, owner))
                else:
                    rows = await s.execute(ps["fence_next"], (want, owner, pid, current))
            except JournalOutcomeUnknownError:
                got, who = await self._serial_fence(pid)
                if who == owner:
                    return got
                current = got
            else:
                row = rows[0]
                if row[0]:
                    return want
                current = int(row.epoch) if getattr(row, "epoch", None) is not None else 0
            await asyncio.sleep(random.uniform(0.001, 0.002) * min(2**attempt, 64))
        raise JournalUnavailableError(
            f"{pid}: could not claim an epoch in {_CLAIM_ATTEMPTS} "
            f"attempts (contended); nothing was written"
        )

    async def _serial_fence(self, pid: str) -> Fence:
        try:
            return await self.fence(pid, serial=True)
        except JournalError as exc:
            raise JournalUnavailableError(
                f"{pid}: a claim was not confirmed and its serial read failed; this activation "
                f"does not start (it writes nothing): {exc}"
            ) from exc

    async def _fence_retrying(self, pid: str, shared: bool = False) -> Fence:
        last: Exception | None = None
        for _ in range(_FENCE_READ_ATTEMPTS):
            try:
                return await (self.fence_shared(pid) if shared else self.fence(pid))
            except JournalError as exc:
                last = exc
        raise JournalOutcomeUnknownError(f"{pid}: the fence could not be read: {last}")
