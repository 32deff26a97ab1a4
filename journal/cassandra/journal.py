"""The Cassandra journal.

Size: ~650 lines, a third of it this docstring (layout, the per-append guard's soundness
argument, the tag query's visibility guarantee); every CQL statement lives in
``raysource.journal.cassandra.statements``.

Guards (``CassandraConfig.guard``): **"epoch"** (default) — one conditional claim per
activation, plain appends, a fence read before each acknowledgement, readers that follow the
chain of epoch records; its protocol and proof sketch are in ``raysource.journal.cassandra.epochs``.
**"per-append"** — every append a conditional batch (described below). **"off"** — plain
batches, no guard (sent like the epoch path's, several aggregates per request:
``shared_writes``). The per-append and unguarded modes write epoch 0.

Layout (see ``raysource.journal.cassandra.schema``): events are partitioned by
``(persistence_id, partition_nr)`` and clustered by ``(sequence_nr, epoch)``. Every statement is
prepared; every append is **one single-partition batch**, so an atomic group is all-or-nothing
(under the epoch guard, the batches of a host's aggregates that flush in the same event-loop
step travel as the per-partition parts of one unlogged request: ``shared_writes``).

Partition placement and the fencing guard
-----------------------------------------
``pn(s) = (s - 1) // partition_size`` is the nominal partition of sequence number ``s``. An atomic
group is written, whole, to the partition of its **first** sequence number. A group that crosses
the nominal boundary therefore overflows the partition by at most ``partition_size - 1`` rows
(groups larger than ``partition_size`` are rejected with ``InvalidAppendError``), and the group
after it starts the next partition.

Placing by the *first* number (rather than moving a crossing group to the next partition, as
akka-persistence-cassandra does) is what makes the guard sound: a conditional batch can only see
its own partition, and two writers racing for sequence number ``n`` both start their groups at
``n`` (each appends at the ``highest + 1`` it read; groups are atomic, so no stored group can
contain both ``n - 1`` and ``n`` unless one of them saw ``n``), so they always meet in partition
``pn(n)`` whatever their group sizes. With "crossing group moves", ``[4999, 5000]`` and
``[4999, 5000, 5001]`` would land in different partitions and both succeed.

* per-append guard: ``INSERT ... IF NOT EXISTS`` for every row, in one conditional
  batch at the serial consistency (LOCAL_SERIAL). If any number is taken nothing is written and
  ``ConcurrentWriteError`` names the first taken number — unless the existing rows are exactly
  this group (same writer id, numbers and payloads): then an earlier execution of the same
  batch applied it (a re-send after a lost response, a coordinator's own Paxos retry) and the
  append succeeded. The batch is never re-sent by the driver (``NoResendRetryPolicy``); when it
  is not confirmed (timeout, lost connection, server error, CAS_WRITE_UNKNOWN) the journal reads
  the group's rows once at the serial consistency, which completes or supersedes a Paxos
  proposal in flight: all ours -> success; another writer's row -> ``ConcurrentWriteError``;
  else ``JournalOutcomeUnknownError`` (it may still land). A writer that starts *inside* another
  writer's group (impossible for writers that append at a ``highest + 1`` they read, but
  possible for an arbitrary stale number) could land in the next partition while the taken
  number sits in the overflow of the previous one; so, before a batch into partition ``P >= 1``,
  the journal also reads the largest number of ``P - 1`` (once per partition and process, since
  ``P - 1`` stops growing once ``P`` is used) and refuses the group if it reaches ``first``.
  That read is not atomic with the batch: the race it leaves needs two writers writing at the
  same partition boundary, one of them starting mid-way through the other's group.
* guard off: a plain unlogged single-partition batch; a duplicate writer silently overwrites rows
  with the same sequence numbers (last write wins per row; a shorter group leaves the tail of
  the longer one in place).

Readers follow the epoch chain (``epochs.View``): without epoch records (the per-append and
unguarded modes) every row is valid and the walks below are the whole story; with records,
replay and ``highest_sequence_nr`` are bounded by the end ``h`` of the valid log and skip rows
of epochs that do not own their segment.

Replay reads partition ``pn(from) - 1`` (it may hold the overflow of a crossing group), then
``pn(from)``, ``pn(from) + 1``, ... and stops at the first partition from ``pn(from)`` on that has
no row in range, or at ``to_sequence_nr``. Partitions never have holes between them because
groups are contiguous and no longer than a partition. Rows are streamed with the driver's paging
(``fetch_size``), so memory is bounded by two pages.

``highest_sequence_nr`` scans partitions upwards for their largest sequence number (one
``ORDER BY sequence_nr DESC LIMIT 1`` query each), starting from a per-id ``partition_hint``
stored in the metadata table (written, once per partition per process, after the append that
first used that partition), or from the partition of ``deleted_to``. Cost: about two queries for a
live aggregate, whatever its history length. The hint is only a lower bound: losing its write
makes the scan longer, never wrong.

``delete_to`` stores a logical ``deleted_to`` mark (clamped to the highest sequence number); no
row is deleted on the write path.

Tag query: offsets and the visibility guarantee
------------------------------------------------
For every tag of every event a row is written to ``tag_views`` partitioned by
``(tag, hour bucket)`` and clustered by ``(timestamp_us, persistence_id, sequence_nr)``, where
``timestamp_us`` is the writer's wall clock when the tag write started. This tuple is the
:class:`~raysource.journal.api.TagOffset`. Tag rows are written after the event batch succeeded and
**before** ``append`` returns.

A tag query run at (reader clock) time ``r`` returns only rows with
``timestamp_us <= r - eventual_consistency_delay`` (the cutoff). If a tag write took longer than
``tag_write_budget`` (< the delay; default half of it), the journal writes the rows again with a
fresh timestamp (up to three times, else ``JournalUnavailableError``: outcome unknown) before
acknowledging.

Guarantee: *a reader that resumes from any offset it was given never misses an event that was
acknowledged before it read.* Why: an acknowledged event has a tag row with timestamp ``t``
whose write completed within ``budget`` of ``t``. Any query whose cutoff is ``>= t`` runs at
``r >= t + delay > t + budget + skew``, i.e. after that row is readable at the configured
consistency (LOCAL_QUORUM write and read), so the row is either returned or lies above the cutoff
and hence above every offset the reader was handed. Assumptions: wall clocks of writer and
reader hosts differ by less than ``delay - budget``, writes and reads use overlapping consistency
levels, and the writer process does not stall between taking the timestamp and sending the
write by more than the budget (which is measured around both).
Visibility delay: ``eventual_consistency_delay`` (default 5 s).
Delivery is at-least-once: re-written rows are duplicates with later offsets; one query
suppresses duplicates it has seen, consumers dedupe by ``(persistence_id, sequence_nr)``.
If the writer dies (or its tag write fails) after the event batch and before the tag rows, the
events are in the journal but not in the tag stream; they were not acknowledged, and the next
recovery re-writes the newest group's tag rows (``repair_tags``) before it answers anyone. A
failed tag write inside ``append`` raises ``JournalOutcomeUnknownError`` (the events ARE stored).
With the guard off, a duplicate writer's overwrite is not reflected reliably in tag streams.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cassandra.query import BatchStatement, BatchType

from raysource.journal.api import (
    Journal,
    JournalCapabilities,
    StoredEvent,
    TaggedEvent,
    TagOffset,
    validate_group,
)
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.driver_errors import consistency
from raysource.journal.cassandra.epochs import Claim, EpochGuard, View, check_next
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.cassandra.shared_writes import SharedWrites
from raysource.journal.cassandra.statements import journal_statements
from raysource.journal.errors import (
    ConcurrentWriteError,
    JournalError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
    MigrationRequiredError,
    WriterFencedError,
)

__all__ = ["CassandraJournal", "to_us", "from_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SEQ = 2**63 - 1
_BUCKET_US = 3600 * 1_000_000
_TAG_ATTEMPTS = 3
_TAG_BATCH = 100  # tag rows per single-partition batch
_MAX_LAZY_CLAIMS = 100_000  # claims held before ended and lazy ones are forgotten


_LAST_US: tuple[datetime | None, int] = (None, 0)


def to_us(ts: datetime) -> int:
    global _LAST_US
    last, us = _LAST_US
    if ts is last:  # the events of one flush share their timestamp object
        return us
    if ts.tzinfo is None:  # naive timestamps are taken as UTC
        us = (ts.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
    else:
        us = (ts - _EPOCH) // timedelta(microseconds=1)
    _LAST_US = (ts, us)
    return us


def from_us(us: int | None) -> datetime:
    return _EPOCH + timedelta(microseconds=us or 0)


def _now_us() -> int:
    return time.time_ns() // 1000


class CassandraJournal(Journal):
    """A :class:`~raysource.journal.api.Journal` on Cassandra. See the module docstring for layout,
    fencing, paging and the tag-query guarantee.

    Build with ``await CassandraJournal.connect(config, create_schema=True)`` (owns its
    session) or ``CassandraJournal(session, config)`` to share a session.
    """

    def __init__(
        self,
        session: CassandraSession,
        config: CassandraConfig | None = None,
        *,
        fencing: bool | None = None,
        own_session: bool = False,
        guard: str | None = None,
    ) -> None:
        self.session = session
        self.config = config or session.config
        if guard is None:
            guard = self.config.effective_guard
            if fencing is not None:
                guard = ("epoch" if guard == "off" else guard) if fencing else "off"
        self.guard = guard
        self.fencing = guard == "per-append"  # the per-append conditional batch
        self.capabilities = JournalCapabilities(fencing=guard != "off", tags=True, delete=True)
        # a group lives in the partition of its first event (the config is frozen)
        self.max_group_size = self.config.partition_size
        self.epochs = EpochGuard(self)
        self._claims: dict[tuple[str, str], Claim] = {}  # (pid, writer id) -> live claim
        self._newest: dict[str, Claim] = {}  # pid -> the newest claim made in this process
        self._evict_at = _MAX_LAZY_CLAIMS  # claims held before ended and lazy ones go
        #: test hook: ``await hook(step, **info)`` at the epoch protocol's named steps
        #: (``raysource.testing.fence_faults``); None in production
        self.hook: Any = None
        #: TEST ONLY: design A of design/fencing.md (the epoch NOT in the row key: rows are
        #: keyed by sequence number alone, the epoch only a value). Unsound on purpose:
        #: ``tests/faults/test_fence_schedules.py`` shows schedule S3 losing an acknowledged event.
        self.unsound_design_a = False
        self._own_session = own_session
        self._ps: dict[str, Any] = {}
        self._prep_lock = asyncio.Lock()
        self._prev_max: dict[tuple[str, int], int] = {}  # (pid, pnr) -> max seq in pnr - 1
        self._hints: dict[str, int] = {}  # pid -> partition hint written by this process
        self._tag_first: dict[str, int] = {}  # tag -> first bucket known to be recorded
        self._closed = False
        self.write_count = 0
        #: the epoch path's host-wide W1 requests (made at the first append)
        self.shared: SharedWrites | None = None

    @classmethod
    async def connect(
        cls,
        config: CassandraConfig,
        *,
        create_schema: bool = False,
        fencing: bool | None = None,
        guard: str | None = None,
    ) -> CassandraJournal:
        session = await CassandraSession.open(config, create_schema=create_schema)
        try:
            journal = cls(session, config, fencing=fencing, own_session=True, guard=guard)
            await journal._prepare()
        except BaseException:
            await session.close()
            raise
        return journal

    async def _prepare(self) -> dict[str, Any]:
        if self._ps:
            return self._ps
        async with self._prep_lock:
            if self._ps:
                return self._ps
            c = self.config
            levels = {
                "write": c.write_consistency,
                "read": c.read_consistency,
                "serial": c.serial_consistency,
            }
            ps = {}
            for name, st in journal_statements(c).items():
                ps[name] = await self.session.prepare(
                    st.cql,
                    consistency_level=levels[st.level],
                    serial_consistency_level=c.serial_consistency if st.conditional else None,
                )
                # Re-sending these is harmless (reads; writes of the same values): the driver
                # may retry them on another host. Everything else is never re-sent by the
                # driver (see NoResendRetryPolicy); in particular no conditional statement.
                ps[name].is_idempotent = st.idempotent
            from raysource.journal.cassandra.migrate import unmigrated

            if await unmigrated(self.session, c):
                raise MigrationRequiredError(
                    f"keyspace {c.keyspace!r} holds events in {c.legacy_events_table!r} (the "
                    f"layout before epochs) that were not migrated: run `raysource schema "
                    f"migrate --keyspace {c.keyspace}` first"
                )
            self._ps = ps
            return ps

    def _pn(self, seq: int) -> int:
        return (seq - 1) // self.config.partition_size

    # ------------------------------------------------------------------ append

    async def append(self, events: Sequence[StoredEvent]) -> None:
        events = list(events)
        validate_group(events, self.config.partition_size)
        ps = await self._prepare()
        if self.guard == "epoch":
            return await self._append_epoch(events)
        pid, first = events[0].persistence_id, events[0].sequence_nr
        pnr = self._pn(first)
        c = self.config
        if not self.fencing:  # guard off: plain rows, sent with the host's other appends
            await self._shared_writes().write([_row(e, pnr, 0, 0) for e in events])
            self.write_count += 1
            await self._follow_ups(events, pnr)
            return
        if pnr > 0:
            try:
                await self._check_previous_partition(pid, pnr, first)
            except JournalOutcomeUnknownError as exc:  # a read, before anything was sent
                raise JournalUnavailableError(
                    f"{pid} #{first}: nothing was written (the check before it failed: {exc})"
                ) from exc
        batch = BatchStatement(
            BatchType.LOGGED,
            consistency_level=consistency(c.write_consistency),
            serial_consistency_level=consistency(c.serial_consistency),
        )
        for e in events:
            batch.add(ps["insert_if"], _row(e, pnr, 0, 0))
        # Plain tuple rows: the driver's named rows build a namedtuple class per result
        # (~10% of a host actor's CPU at one command per write, measured by
        # benchmarks/peer/profile.py). Only ``[applied]`` (column 0) is read here; a refused
        # batch is decided by _settle's serial read of the group's rows.
        try:
            rows = await self.session.execute_batch(batch, profile=RAW_PROFILE)
        except JournalOutcomeUnknownError as exc:
            await self._settle(events, pnr, exc)  # returns only if the group is stored
        else:
            if rows and not rows[0][0]:
                # Refused: a number is taken. If the rows holding them are this group (same
                # writer, numbers and payloads), an earlier execution of the same statement
                # applied it (a re-send after a lost response, a coordinator's Paxos retry):
                # a success. Else another writer's: ConcurrentWriteError.
                await self._settle(events, pnr, None)
        self.write_count += 1
        await self._follow_ups(events, pnr)  # the events ARE stored: never "not written"

    # ------------------------------------------------------------------ epoch guard

    async def begin_activation(self, persistence_id: str, writer_id: str) -> None:
        """Epoch guard: claim a new epoch for ``writer_id`` on ``persistence_id`` and confirm
        it (see ``raysource.journal.cassandra.epochs``) BEFORE the activation reads its
        history; every later read then follows this epoch's chain. Other guards: nothing."""
        if self.guard != "epoch":
            return
        await self._prepare()
        claim = await self.epochs.claim(persistence_id, writer_id)
        claim.activation = True  # held until end_activation, never evicted
        self._keep(claim)

    async def begin_activations(
        self, activations: Sequence[tuple[str, str]], *, concurrency: int = 32
    ) -> list[BaseException | int | None]:
        """Many claims together: ``raysource.journal.cassandra.bulk_claims``."""
        from raysource.journal.cassandra.bulk_claims import begin_activations

        return await begin_activations(self, activations, concurrency)

    async def end_activation(self, persistence_id: str, writer_id: str) -> None:
        """Forget the activation's claim (passivation). Its epoch stays current until the
        next activation claims."""
        claim = self._claims.pop((persistence_id, writer_id), None)
        if claim is not None and self._newest.get(persistence_id) is claim:
            del self._newest[persistence_id]

    async def confirm_activation(self, persistence_id: str, writer_id: str) -> bool | None:
        """Epoch guard: a fence read (sent after this call) names this activation's epoch and
        owner. False (and the epoch ends) if it names a newer one or the claim is not held
        here; ``JournalOutcomeUnknownError`` if the fence cannot be read. Other guards: None."""
        if self.guard != "epoch":
            return None
        claim = self._claims.get((persistence_id, writer_id))
        if claim is None or claim.ended:
            return False
        got = await self.epochs._fence_retrying(persistence_id, shared=True)
        if got != (claim.epoch, claim.owner):
            self._end(claim)
            return False
        return True

    def _keep(self, claim: Claim) -> None:
        if len(self._claims) > self._evict_at:
            self._evict()
            # live activations are never dropped: with that many, evict again only once the
            # claims have doubled (not at every claim)
            self._evict_at = max(_MAX_LAZY_CLAIMS, 2 * len(self._claims))
        self._claims[(claim.persistence_id, claim.writer_id)] = claim
        newest = self._newest.get(claim.persistence_id)
        if newest is None or claim.epoch > newest.epoch:
            self._newest[claim.persistence_id] = claim

    def _evict(self) -> None:
        """Forget ended claims and lazy ones (appends without ``begin_activation``, whose
        writers never say they ended): a lazy writer claims again at its next append, after
        the same checks. A live activation's claim is never dropped: losing it would let
        that activation, superseded elsewhere, claim again lazily and acknowledge after the
        newer activation recovered without its event (and its reads would stop following
        its own view); activations release theirs in ``end_activation``."""
        for key, c in list(self._claims.items()):
            if c.ended or not c.activation:
                del self._claims[key]
                if self._newest.get(c.persistence_id) is c:
                    del self._newest[c.persistence_id]

    async def _hook(self, step: str, **info: Any) -> None:
        if self.hook is not None:
            await self.hook(step, **info)

    async def _append_epoch(self, events: list[StoredEvent]) -> None:
        """W1 (plain batch of epoch E) -> fence read == (E, owner) -> tags -> acknowledge.

        A writer that did not call :meth:`begin_activation` claims lazily here, after checking
        (before and after the claim) that the valid log ends right before ``first``: it then
        gets the sequence-number guard (taken numbers: ``ConcurrentWriteError``) but not the
        no-interleaving guarantee of a claim made before the writer read its state."""
        pid, first, last = events[0].persistence_id, events[0].sequence_nr, events[-1].sequence_nr
        writer = events[0].writer_id
        key = (pid, writer)
        claim = self._claims.get(key)
        if claim is not None and claim.ended:
            raise WriterFencedError(
                f"{pid}: writer {writer!r}'s epoch {claim.epoch} ended; nothing more is written"
            )
        if claim is None:
            try:
                view: View | None = await self.epochs.view(pid, stable=True, wait=False)
            except JournalUnavailableError:
                # A newer epoch holds the fence without its record (recovering, or its
                # record write failed): no stable view to check against; the claim below
                # reads the chain, writes this writer's record (repairing the chain) and
                # checks ``first`` against it.
                view = None
            if view is not None and first <= view.h and await self._stored_exactly(events, view):
                # the same append delivered twice, valid in a stable view: its follow-up
                # writes (tags, hint) may be what failed the first time, so they go again
                await self._follow_ups(events, self._pn(first))
                return
            if view is not None:
                check_next(pid, view.h, first)
            claim = await self.epochs.claim(pid, writer, expect_next=first)
            self._keep(claim)
        if first != claim.next_seq:
            if last <= claim.acked_seq and await self._stored_exactly(events, None, claim):
                # the same append delivered twice, after it passed its fence read: valid for
                # good; its follow-up writes may be what failed the first time
                await self._follow_ups(events, self._pn(first))
                return
            if first > claim.next_seq and self._newest.get(pid) is not claim:
                # A newer activation of ``pid`` claimed in this process: this writer's reads
                # (which follow the newest claim here) showed it a log its own epoch never
                # saw. Refuse (nothing written) and end the epoch: the writer must stop.
                self._end(claim)
                raise ConcurrentWriteError(
                    pid,
                    first,
                    f"{pid}: writer {writer!r} (epoch {claim.epoch}) was superseded "
                    f"by a newer activation in this process; #{first} not written",
                )
            check_next(pid, claim.next_seq - 1, first)
        pnr = self._pn(first)
        epoch = claim.epoch
        key_epoch = 0 if self.unsound_design_a else epoch
        rows = [_row(e, pnr, key_epoch, epoch) for e in events]
        await self._hook("append.before_w1", pid=pid, epoch=epoch, first=first, last=last)
        try:
            # with the W1 parts of the host's other aggregates asked for in this loop step:
            # one request (raysource.journal.cassandra.shared_writes)
            await self._shared_writes().write(rows)
        except JournalError as exc:
            # Any failure: the batch may have reached a coordinator (a connection reset after
            # the send surfaces as "no host available" too), so it is unknown, never "not
            # applied"; the epoch ends (its numbers can never be reused with other content).
            # A shared request's failure is this for every aggregate it carried.
            self._end(claim)
            raise WriterFencedError(
                f"{pid} #{first}..#{last}: the write was not confirmed; epoch {epoch} ends: {exc}"
            ) from exc
        claim.next_seq = last + 1  # numbers up to ``last`` may be stored: never reused
        self.write_count += 1
        await self._hook("append.after_w1", pid=pid, epoch=epoch, first=first, last=last)
        try:
            got = await self.epochs._fence_retrying(pid, shared=True)
        except JournalError as exc:
            self._end(claim)
            raise WriterFencedError(
                f"{pid} #{first}..#{last}: stored, but the fence could not "
                f"be read; epoch {epoch} ends: {exc}"
            ) from exc
        if got != (epoch, claim.owner):
            self._end(claim)
            raise WriterFencedError(
                f"{pid} #{first}..#{last}: fenced by epoch {got[0]} (this "
                f"writer's epoch {epoch} ends); a newer activation may "
                f"have recovered these events"
            )
        # passed its fence read: valid for good (max: a later flush's read may answer first)
        claim.acked_seq = max(claim.acked_seq, last)
        await self._hook("append.after_fence", pid=pid, epoch=epoch, first=first, last=last)
        await self._follow_ups(events, pnr)

    async def _follow_ups(self, events: list[StoredEvent], pnr: int) -> None:
        """The writes that follow valid events: the partition hint and the tag rows (both
        idempotent); a failure leaves the events valid but unacknowledged (outcome unknown)."""
        pid, first, last = events[0].persistence_id, events[0].sequence_nr, events[-1].sequence_nr
        follow_ups = []
        if pnr > 0 and self._hints.get(pid, -1) < pnr:
            follow_ups.append(self._write_hint(pid, pnr))
        if any(e.tags for e in events):
            follow_ups.append(self._write_tags(events))
        if follow_ups:
            try:
                await asyncio.gather(*follow_ups)
            except Exception as exc:
                # The events are stored (per-append) or passed their fence read (epoch: valid
                # for good, the epoch goes on); a re-read and the next recovery's tag repair
                # decide.
                raise JournalOutcomeUnknownError(
                    f"{pid} #{first}..#{last}: the events are stored, but their follow-up writes "
                    f"failed, so they were not acknowledged: {exc}"
                ) from exc

    def _end(self, claim: Claim) -> None:
        claim.ended = True

    def _shared_writes(self) -> SharedWrites:
        if self.shared is None:
            c = self.config
            self.shared = SharedWrites(
                self.session,
                self._ps["insert"],
                c.write_consistency,
                max_parts=c.shared_write_partitions,
                max_bytes=c.shared_write_bytes,
            )
        return self.shared

    async def _stored_exactly(
        self, events: list[StoredEvent], view: View | None, claim: Claim | None = None
    ) -> bool:
        """Are ``events`` stored as valid rows, each with the same writer and payload?"""
        pid, first, last = events[0].persistence_id, events[0].sequence_nr, events[-1].sequence_nr
        if claim is not None:
            rows = [e async for e in self._rows(pid, first, last) if e[1] == claim.epoch]
        else:
            assert view is not None
            rows = [e async for e in self._rows(pid, first, last) if view.valid(e[0], e[1])]
        found = {(r[0], r[2].writer_id, bytes(r[2].payload)) for r in rows}
        return found == _keys(events)

    async def _rows(
        self, pid: str, first: int, last: int, *, walk: bool = False
    ) -> AsyncIterator[tuple[int, int, StoredEvent]]:
        """Every row ``first..last`` of any epoch: (seq, epoch, StoredEvent), by (seq, epoch).

        ``walk`` (``last`` unbounded): partitions ``pn(first) - 1``, ``pn(first)``, ... until
        the first one from ``pn(first)`` on without a row in range (partitions have no holes
        between them: groups are contiguous and no longer than a partition)."""
        first_p = self._pn(first)
        p = max(0, first_p - 1)
        while walk or p <= self._pn(last):
            n = 0
            async for row in self.session.stream(
                self._ps["range"], (pid, p, first, last), profile=RAW_PROFILE
            ):
                seq, epoch, ts, writer, sid, manifest, payload, tags, meta = row
                n += 1
                yield (
                    seq,
                    epoch or 0,
                    StoredEvent(
                        pid,
                        seq,
                        payload,
                        manifest,
                        sid,
                        from_us(ts),
                        writer or "",
                        frozenset(tags or ()),
                        dict(meta or {}),
                    ),
                )
            if walk and p >= first_p and n == 0:
                return
            p += 1

    async def _settle(
        self, events: list[StoredEvent], pnr: int, unknown: JournalOutcomeUnknownError | None
    ) -> None:
        """Decide an unconfirmed (``unknown``) or refused (``unknown`` None) conditional append
        with one read of its rows at the serial consistency, which completes (or supersedes) a
        Paxos proposal still in flight:

        * every row is this group's: stored, return;
        * a number is held by another writer's row: this group can never be applied (its
          condition fails): ``ConcurrentWriteError``;
        * else, unconfirmed (absent, or the read failed): re-raise the unknown outcome — a
          coordinator still retrying its Paxos round, or a request queued on a stalled node,
          may still land it; refused: the read failed, so whose rows refused it is unknown
          (``JournalOutcomeUnknownError``), or they are not all there (``ConcurrentWriteError``).
        """
        pid, first, last = events[0].persistence_id, events[0].sequence_nr, events[-1].sequence_nr
        try:
            rows = await self.session.select_all(
                self._ps["range_serial"], (pid, pnr, first, last), profile=RAW_PROFILE
            )
        except JournalError as exc:  # cannot decide: still unknown (keeps its driver cause)
            if unknown is None:
                raise JournalOutcomeUnknownError(
                    f"{pid} #{first}: the conditional append was refused and the read of the "
                    f"rows that refused it failed (they may be this group's): {exc}"
                ) from exc
            raise unknown  # noqa: B904
        found = {
            (seq, writer or "", bytes(payload or b""))
            for seq, epoch, writer, payload in rows
            if not epoch
        }
        ours = _keys(events)
        if found == ours:
            return
        theirs = [key[0] for key in found if key not in ours]
        if theirs:
            raise ConcurrentWriteError(pid, min(theirs))
        if unknown is None:
            raise ConcurrentWriteError(pid, first)
        raise unknown

    async def _check_previous_partition(self, pid: str, pnr: int, first: int) -> None:
        """Refuse a group whose first number lies in the overflow of partition ``pnr - 1``
        (a writer starting in the middle of someone else's crossing group). One read per
        partition and process: once ``pnr`` is in use, ``pnr - 1`` no longer grows."""
        key = (pid, pnr)
        prev_max = self._prev_max.get(key)
        if prev_max is None:
            row = await self.session.select_one(
                self._ps["max_in_partition"], (pid, pnr - 1), profile=RAW_PROFILE
            )
            prev_max = row[0] if row else 0
            if len(self._prev_max) > 100_000:
                self._prev_max.clear()
            self._prev_max[key] = prev_max
        if prev_max >= first:
            raise ConcurrentWriteError(pid, first)

    async def _write_hint(self, pid: str, pnr: int) -> None:
        await self.session.execute(self._ps["set_hint"], (pnr, pid))
        if len(self._hints) > 100_000:
            self._hints.clear()
        self._hints[pid] = pnr

    async def _write_tags(self, events: list[StoredEvent]) -> None:
        budget = self.config.tag_budget
        c = self.config
        for _attempt in range(_TAG_ATTEMPTS):
            tags = {t for e in events for t in e.tags}
            pre = _now_us() // _BUCKET_US
            await asyncio.gather(*(self._ensure_first_bucket(t, pre) for t in tags))
            started = time.monotonic()
            ts = _now_us()
            bucket = ts // _BUCKET_US
            if bucket < pre:  # the wall clock stepped back across an hour
                await asyncio.gather(*(self._ensure_first_bucket(t, bucket) for t in tags))
            ins = self._ps["tag_insert"]
            # All rows of one tag share the partition (tag, bucket): one unlogged
            # single-partition batch per tag (and per _TAG_BATCH rows) instead of a request
            # per row — 100 tagged events went from ~15 ms to a few ms.
            batches = []
            for tag in sorted(tags):
                rows = [e for e in events if tag in e.tags]
                for i in range(0, len(rows), _TAG_BATCH):
                    batch = BatchStatement(
                        BatchType.UNLOGGED, consistency_level=consistency(c.write_consistency)
                    )
                    batch.is_idempotent = True  # the same rows again: safe to re-send
                    for e in rows[i : i + _TAG_BATCH]:
                        batch.add(
                            ins,
                            (
                                tag,
                                bucket,
                                ts,
                                e.persistence_id,
                                e.sequence_nr,
                                to_us(e.timestamp),
                                e.writer_id,
                                e.serializer_id,
                                e.manifest,
                                bytes(e.payload),
                                set(e.tags),
                                dict(e.metadata) or None,
                            ),
                        )
                    batches.append(self.session.execute_batch(batch))
            await asyncio.gather(*batches)
            if time.monotonic() - started <= budget:
                return
        raise JournalUnavailableError(
            f"tag rows of {events[0].persistence_id!r} {events[0].sequence_nr}.."
            f"{events[-1].sequence_nr} were not written within {budget:.3f} s in "
            f"{_TAG_ATTEMPTS} attempts; the events are stored but were not acknowledged"
        )

    async def repair_tags(self, events: Sequence[StoredEvent]) -> int:
        """Re-write the tag rows of ``events`` (see :meth:`Journal.repair_tags`), in groups of
        at most 500 events."""
        tagged = [e for e in events if e.tags]
        for i in range(0, len(tagged), 500):
            await self._write_tags(tagged[i : i + 500])
        return sum(len(e.tags) for e in tagged)

    async def _ensure_first_bucket(self, tag: str, bucket: int) -> None:
        """Make ``tag_metadata.first_bucket <= bucket`` (a CAS loop; once per tag and process
        unless the clock goes back across an hour)."""
        known = self._tag_first.get(tag)
        if known is not None and known <= bucket:
            return
        s = self.session
        rows = await s.execute(self._ps["tag_first_new"], (tag, bucket))
        while not rows[0][0]:
            current = rows[0].first_bucket
            if current is None or current <= bucket:
                break
            rows = await s.execute(self._ps["tag_first_lower"], (bucket, tag, current))
        self._tag_first[tag] = bucket

    # ------------------------------------------------------------------ reads

    async def _meta(self, pid: str) -> tuple[int, int]:
        row = await self.session.select_one(self._ps["meta"], (pid,), profile=RAW_PROFILE)
        if row is None:
            return 0, 0
        return row[0] or 0, row[1] or 0

    async def replay(
        self, persistence_id: str, from_sequence_nr: int = 1, to_sequence_nr: int | None = None
    ) -> AsyncGenerator[StoredEvent, None]:
        """The valid log (``raysource.journal.cassandra.epochs``: the head record's chain, the
        contiguous run of its last segment), ``from..to``, paged."""
        await self._prepare()
        deleted_to, _ = await self._meta(persistence_id)
        view = self._recovery_view(persistence_id) or await self.epochs.view(
            persistence_id, bounded=False, stable=True
        )
        start = max(from_sequence_nr, deleted_to + 1, 1)
        upper = _MAX_SEQ if to_sequence_nr is None else to_sequence_nr
        if view.h >= 0:
            upper = min(upper, view.h)
        if start > upper:
            return
        async for seq, epoch, event in self._rows(persistence_id, start, upper, walk=view.h < 0):
            if view.valid(seq, epoch):
                yield event

    async def highest_sequence_nr(self, persistence_id: str) -> int:
        """The end of the valid log (deletes do not lower it)."""
        await self._prepare()
        deleted_to, _ = await self._meta(persistence_id)
        view = self._recovery_view(persistence_id) or await self.epochs.view(
            persistence_id, stable=True
        )
        return max(view.h, deleted_to)

    def _recovery_view(self, pid: str) -> View | None:
        """While this process holds a live claim of ``pid``, its reads (recovery, the re-read
        after a failed write, ``_is_stored``) follow that claim: its confirmed chain plus its
        own rows up to the last that passed a fence read — never a newer activation's record,
        whose chain may drop rows this activation cannot see (its next append is fenced
        anyway), and never its own rows that did not pass a fence read."""
        claim = self._newest.get(pid)
        if claim is None or claim.ended or claim.view is None:
            return None
        return claim.own_view()

    async def _max_seq(self, pid: str) -> int:
        """The largest sequence number of any row (the log before epochs: epoch 0 only)."""
        deleted_to, hint = await self._meta(pid)
        p0 = max(hint, self._pn(deleted_to) - 1 if deleted_to else 0, 0)
        # partitions up to that of deleted_to + 1 may be empty (removed by retention)
        last_empty = max(p0, self._pn(deleted_to + 1))
        highest, p = deleted_to, p0
        while True:
            row = await self.session.select_one(
                self._ps["max_in_partition"], (pid, p), profile=RAW_PROFILE
            )
            if row is None:
                if p > last_empty:
                    return highest
            else:
                highest = max(highest, row[0])
            p += 1

    async def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        ps = await self._prepare()
        to = min(to_sequence_nr, await self.highest_sequence_nr(persistence_id))
        deleted_to, _ = await self._meta(persistence_id)
        if to > deleted_to:
            await self.session.execute(ps["set_deleted"], (to, persistence_id))

    async def events_by_tag(
        self, tag: str, after: TagOffset | None = None, *, limit: int | None = None
    ) -> AsyncGenerator[TaggedEvent, None]:
        ps = await self._prepare()
        after = after or TagOffset.start()
        cutoff = _now_us() - int(self.config.eventual_consistency_delay * 1_000_000)
        if after.timestamp_us >= cutoff:
            return
        row = await self.session.select_one(ps["tag_first_get"], (tag,), profile=RAW_PROFILE)
        if row is None or row[0] is None:
            return
        bucket = max(row[0], after.timestamp_us // _BUCKET_US)
        seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        window = int(10 * self.config.eventual_consistency_delay * 1_000_000)
        n = 0
        while bucket <= cutoff // _BUCKET_US:
            params = (
                tag,
                bucket,
                after.timestamp_us,
                after.persistence_id,
                after.sequence_nr,
                cutoff,
            )
            async for r in self.session.stream(ps["tag_select"], params, profile=RAW_PROFILE):
                ts, pid, seq, ets, writer, sid, manifest, payload, tags, meta = r
                key = (pid, seq)
                while seen and next(iter(seen.values())) < ts - window:
                    seen.popitem(last=False)
                if key in seen:
                    continue  # a re-written tag row (at-least-once); skip within one query
                seen[key] = ts
                if limit is not None and n >= limit:
                    return
                n += 1
                yield TaggedEvent(
                    tag,
                    TagOffset(ts, pid, seq),
                    StoredEvent(
                        pid,
                        seq,
                        payload,
                        manifest,
                        sid,
                        from_us(ets),
                        writer or "",
                        frozenset(tags or ()),
                        dict(meta or {}),
                    ),
                )
            bucket += 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_session:
            await self.session.close()


def _row(e: StoredEvent, pnr: int, key_epoch: int, epoch: int) -> tuple[Any, ...]:
    """The insert's values for event ``e`` (see ``statements.EVENT_COLUMNS``)."""
    return (
        e.persistence_id,
        pnr,
        e.sequence_nr,
        key_epoch,
        epoch,
        to_us(e.timestamp),
        e.writer_id,
        e.serializer_id,
        e.manifest,
        bytes(e.payload),
        set(e.tags) or None,
        dict(e.metadata) or None,
    )


def _keys(events: Sequence[StoredEvent]) -> set[tuple[int, str, bytes]]:
    return {(e.sequence_nr, e.writer_id, bytes(e.payload)) for e in events}


def new_writer_id() -> str:
    """A fresh writer id for one activation (diagnostics of fencing conflicts)."""
    return uuid.uuid4().hex[:12]
