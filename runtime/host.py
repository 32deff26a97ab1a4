"""Many entity cores of one aggregate type inside one process, without Ray.

Size: ~700 lines: activation, passivation, caps, bounds and per-caller order of one host are
one lifecycle over one table of cores; splitting it would spread that table's invariants.

:class:`AggregateHost` is what a Ray host actor wraps (``raysource.runtime.actors.host_actor``), in
both placements: a *dedicated* actor hosts one entity (``reactivate=False``: once that entity is
deactivated the host never activates it again, the actor retires), a *hosted* actor hosts many.

Contracts:

* **One activation per entity in this host.** Activation (recovery) is bounded by a semaphore
  (``max_concurrent_recoveries``); commands for an entity that is recovering wait for it.
* **Passivation** (idle timeout sweep, the ``max_active`` cap with least recently used first,
  :meth:`AggregateHost.passivate`, :meth:`AggregateHost.handoff`) stops the core, which first
  finishes every command already in its mailbox. A command that races with it is either in that
  mailbox (processed by the old core) or waits until the old core has fully stopped and then
  goes to a fresh core that recovers after it — never lost, never run twice.
* **On durable** (``on_durable``): after every acknowledged ``journal.append`` (before the
  core releases the replies) the listener gets the appended events, synchronously. It must not
  block or raise (an exception is logged and ignored): the read side's live path queues them
  (``raysource.runtime.actors.live``).
* **Fencing**: a core that stopped on its own (a concurrent writer, a failed recovery) is
  dropped; its commands got ``AggregateStoppedError`` and the next command activates a fresh
  core that recovers the true history (``reactivate=True``), or gets ``PassivatedError``
  (``reactivate=False``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import ConfigError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.bulk_recovery import BulkActivations
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import (
    AggregateStoppedError,
    OverloadedError,
    PassivatedError,
    RecoveryFailedError,
)
from raysource.runtime.hot import HotTracker
from raysource.runtime.metrics import Metrics, error_kind
from raysource.runtime.ordering import CallerOrder
from raysource.snapshots.api import SnapshotStore
from raysource.timers.api import TimerStore

__all__ = ["AggregateHost", "DeactivationReason", "HostStats", "ids_matching"]

log = logging.getLogger(__name__)

# "idle" | "evicted" | "passivated" | "handoff" | "closed" | "fenced" (the core stopped on its
# own: a concurrent writer, or a rebuild after a failed write that failed too)
DeactivationReason = str


@dataclass(slots=True)
class HostStats:
    """Counters of one host (cumulative over every activation it ran)."""

    activations: int = 0
    failed_activations: int = 0
    passivations: dict[str, int] = field(default_factory=dict)
    recovery_s_total: float = 0.0
    recovery_s_max: float = 0.0
    events_replayed: int = 0
    # summed CoreStats of cores that are gone (live ones are added by AggregateHost.info)
    commands: int = 0
    writes: int = 0
    events: int = 0
    flushes: int = 0
    failed_commands: int = 0
    snapshots: int = 0
    overloaded: int = 0  # calls refused by max_mailbox / max_in_flight
    repeats: int = 0  # commands answered from an idempotency key table (applied before)


class AggregateHost:
    """Hosts the entity cores of ``aggregate_type`` in one asyncio event loop.

    ``idle_timeout_s`` defaults to the type's; ``max_active`` None means no cap;
    ``sweep_interval_s`` defaults to a quarter of the idle timeout (at most 5 s).
    Bounded: at most ``max_mailbox`` calls (commands and state reads, queued or running) per
    aggregate and ``max_in_flight`` over the whole host; a call beyond either is refused at once
    with ``OverloadedError`` (not applied; None: no limit).
    ``on_deactivated(entity_id, reason)`` is called (synchronously) when an entity leaves the
    host for any reason. ``admit(entity_id)`` (optional) is asked right before an entity is
    (re)activated: an error it returns is raised instead (not applied; e.g. the entity's shard
    was handed off: a shared host actor closes the gate, then calls :meth:`handoff`).
    ``metrics`` (default: a new in-memory
    :class:`~raysource.runtime.metrics.Metrics`) is shared with every core of this host;
    ``metrics_host`` is its ``host`` label on ``raysource_active_aggregates``. Use from one event
    loop; call :meth:`close` at the end.
    """

    def __init__(
        self,
        aggregate_type: AggregateType[Any, Any, Any],
        journal: Journal,
        snapshot_store: SnapshotStore,
        serialization: Serialization,
        *,
        writer_prefix: str = "",
        max_active: int | None = None,
        max_concurrent_recoveries: int = 8,
        idle_timeout_s: float | None = None,
        sweep_interval_s: float | None = None,
        reactivate: bool = True,
        max_batch: int = 256,
        order_gap_timeout_s: float = 10.0,
        max_ordered_entities: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        on_deactivated: Callable[[str, DeactivationReason], None] | None = None,
        metrics: Metrics | None = None,
        metrics_host: str = "local",
        on_durable: Callable[[list[StoredEvent]], None] | None = None,
        max_mailbox: int | None = 1_000,
        max_in_flight: int | None = 10_000,
        timer_store: TimerStore | None = None,
        admit: Callable[[str], BaseException | None] | None = None,
        bulk_activations: bool = True,
    ) -> None:
        for name, limit in (("max_mailbox", max_mailbox), ("max_in_flight", max_in_flight)):
            if limit is not None and limit < 1:
                raise ConfigError(f"{name} must be >= 1 or None")
        self.max_mailbox = max_mailbox
        self.max_in_flight = max_in_flight
        self._in_flight_total = 0
        if max_active is not None and max_active < 1:
            raise ConfigError("max_active must be >= 1 or None")
        if max_concurrent_recoveries < 1:
            raise ConfigError("max_concurrent_recoveries must be >= 1")
        self.aggregate_type = aggregate_type
        self.timer_store = timer_store  # durable timers' index (raysource.timers)
        self.journal = journal
        self.on_durable = on_durable  # each core calls it after each acknowledged append
        self.snapshot_store = snapshot_store
        self.serialization = serialization
        self.writer_prefix = writer_prefix or uuid.uuid4().hex[:12]
        self.max_active = max_active
        self.idle_timeout_s = float(idle_timeout_s or aggregate_type.idle_timeout_s)
        self.sweep_interval_s = sweep_interval_s or min(self.idle_timeout_s / 4, 5.0)
        self.reactivate = reactivate
        self.max_batch = max_batch
        self.order_gap_timeout_s = order_gap_timeout_s
        self.stats = HostStats()
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics_host = metrics_host
        self._clock = clock
        self._on_deactivated = on_deactivated
        self._recoveries = asyncio.Semaphore(max_concurrent_recoveries)
        self._cores: OrderedDict[str, EntityCore] = OrderedDict()  # LRU first
        self._activating: dict[str, asyncio.Future[Any]] = {}
        self._stopping: dict[str, asyncio.Future[Any]] = {}
        self._inflight: dict[str, int] = {}
        self._orders: OrderedDict[str, CallerOrder] = OrderedDict()  # per entity, LRU first
        self.max_ordered_entities = max_ordered_entities
        self._retired: set[str] = set()  # reactivate=False: entities that may not come back
        self._admit = admit
        self._sweeper: asyncio.Task[Any] | None = None
        self.hot = HotTracker(clock=clock)
        self._closed = False
        self._generation = 0
        # activations asked for in one loop tick start together (claims, reads): see
        # raysource.runtime.bulk_recovery; False: one by one (the path before it)
        self._bulk = BulkActivations(self) if bulk_activations else None

    # ------------------------------------------------------------------ views

    @property
    def active(self) -> list[str]:
        """Entity ids with a live core, least recently used first."""
        return list(self._cores)

    @property
    def busy(self) -> bool:
        """True while an activation, a stop or a command is in progress."""
        return bool(self._activating or self._stopping or self._inflight)

    def core(self, entity_id: str) -> EntityCore | None:
        """The live core of ``entity_id`` (None if not active)."""
        return self._cores.get(entity_id)

    def info(self) -> dict[str, Any]:
        """A picklable summary: active entities, host counters plus the live cores' counters."""
        totals = asdict(self.stats)
        for core in self._cores.values():
            for k in (
                "commands",
                "writes",
                "events",
                "flushes",
                "failed_commands",
                "snapshots",
                "repeats",
            ):
                totals[k] += getattr(core.stats, k)
        return {
            "aggregate_type": self.aggregate_type.name,
            "active": len(self._cores),
            "entities": list(self._cores),
            "activating": len(self._activating),
            "stopping": len(self._stopping),
            "stats": totals,
            "recoveries": {
                eid: asdict(c.recovery) for eid, c in self._cores.items() if c.recovery is not None
            },
            "sequence_nrs": {eid: c.sequence_nr for eid, c in self._cores.items()},
            "metrics": self.metrics.snapshot(),
            "hot": self.hot.info(),
        }

    # ------------------------------------------------------------------ activation

    async def get_or_activate(self, entity_id: str) -> EntityCore:
        """The live core of ``entity_id``, activating (recovering) it if needed.

        Returns without suspending once the core is live, so a caller that submits right after
        the await is in that core's mailbox before any passivation can stop it. Raises
        ``RecoveryFailedError`` (not applied; the recovery error chained) if recovery fails,
        ``PassivatedError`` for a retired entity (``reactivate=False``) or a closed host.
        """
        self.aggregate_type.persistence_id(entity_id)  # validates the id (ConfigError)
        self._ensure_sweeper()
        while True:
            if self._closed or entity_id in self._retired:
                raise self._passivated_error(entity_id)
            stopping = self._stopping.get(entity_id)
            if stopping is not None:
                await asyncio.shield(stopping)
                continue
            core = self._cores.get(entity_id)
            if core is not None:
                if core.stopped:  # fenced or failed on its own: drop, maybe activate anew
                    self._drop_failed(entity_id, core)
                    continue
                self._cores.move_to_end(entity_id)
                return core
            pending = self._activating.get(entity_id)
            if pending is not None:
                await asyncio.shield(pending)  # raises the recovery error for every waiter
                continue
            refused = self._admit(entity_id) if self._admit is not None else None
            if refused is not None:
                raise refused
            await self._activate(entity_id)

    async def activate_many(self, entity_ids: Iterable[str]) -> dict[str, BaseException]:
        """Activate (recover) every entity of ``entity_ids`` together (a shard moving in, a
        restart): one batch of claims and reads (``raysource.runtime.bulk_recovery``).
        Returns the entities that could not be activated, with their errors (like
        :meth:`get_or_activate` raises them); the rest are live when it returns (or were
        passivated again by the ``max_active`` cap)."""
        ids = list(dict.fromkeys(entity_ids))
        outcomes = await asyncio.gather(*(self._warm(e) for e in ids), return_exceptions=True)
        failed = {e: o for e, o in zip(ids, outcomes) if isinstance(o, BaseException)}
        for o in failed.values():
            if not isinstance(o, Exception):
                raise o  # a cancellation, not an activation's outcome
        return failed

    async def _warm(self, entity_id: str) -> None:
        """One activation attempt of ``entity_id`` unless it is active, activating or
        stopping (then nothing, or wait for that activation): unlike
        :meth:`get_or_activate` it does not activate again an entity the cap evicted
        meanwhile (a warm-up larger than the cap would evict its own batch-mates in a loop)."""
        self.aggregate_type.persistence_id(entity_id)
        if self._closed or entity_id in self._retired:
            raise self._passivated_error(entity_id)
        pending = self._activating.get(entity_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        if entity_id in self._cores or entity_id in self._stopping:
            return
        refused = self._admit(entity_id) if self._admit is not None else None
        if refused is not None:
            raise refused
        self._ensure_sweeper()
        await self._activate(entity_id)

    async def _activate(self, entity_id: str) -> None:
        if self._bulk is not None:
            await asyncio.shield(self._bulk.request(entity_id))
            return
        done = asyncio.get_running_loop().create_future()
        core = self._new_core(entity_id)
        self._activating[entity_id] = done
        try:
            async with self._recoveries:
                recovery = await core.start()
        except BaseException as exc:
            error = self._activation_failed(entity_id, core, done, exc)
            if error is exc:
                raise
            raise error from exc
        self._activated(entity_id, core, done, recovery)

    def _new_core(self, entity_id: str) -> EntityCore:
        self._generation += 1
        return EntityCore(
            self.aggregate_type,
            entity_id,
            self.journal,
            self.snapshot_store,
            self.serialization,
            writer_id=f"{self.writer_prefix}-{self._generation}",
            max_batch=self.max_batch,
            clock=self._clock,
            metrics=self.metrics,
            timer_store=self.timer_store,
            on_durable=self.on_durable,
        )

    def _activation_failed(
        self, entity_id: str, core: EntityCore, done: asyncio.Future[Any], exc: BaseException
    ) -> BaseException:
        """The activation of ``entity_id`` failed with ``exc``: its waiters get
        ``RecoveryFailedError`` (not applied, ``exc`` chained), or ``exc`` itself if it is
        not an ``Exception`` (a cancellation)."""
        self.stats.failed_activations += 1
        if self._activating.get(entity_id) is done:
            del self._activating[entity_id]
        error: BaseException = exc
        if isinstance(exc, Exception):  # the command never ran: say so, in its category
            if core.recovery is None and not core.stopped:  # failed before the core started
                self.metrics.journal_error(self.aggregate_type.name, error_kind(exc))
            error = RecoveryFailedError(
                f"{core.persistence_id}: recovery failed, the command was not applied: {exc!r}"
            )
            error.__cause__ = exc
        done.set_exception(error)
        done.exception()  # retrieved: waiters may be none
        return error

    def _activated(
        self, entity_id: str, core: EntityCore, done: asyncio.Future[Any], recovery: Any
    ) -> None:
        self.stats.activations += 1
        self.stats.recovery_s_total += recovery.duration_s
        self.stats.recovery_s_max = max(self.stats.recovery_s_max, recovery.duration_s)
        self.stats.events_replayed += recovery.events_replayed
        del self._activating[entity_id]
        self._cores[entity_id] = core
        self._record_active()
        done.set_result(None)
        self._enforce_cap()

    def _passivated_error(self, entity_id: str) -> PassivatedError:
        return PassivatedError(
            f"{self.aggregate_type.persistence_id(entity_id)}: passivated here; "
            "not applied, retry reaches a fresh activation"
        )

    def _drop_failed(self, entity_id: str, core: EntityCore) -> None:
        if self._cores.get(entity_id) is core:
            del self._cores[entity_id]
            self._add_stats(core)
            self._deactivated(entity_id, "fenced", core)
            # the core already failed its queued commands; let its loop end in the background
            task = asyncio.ensure_future(core.stop())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ------------------------------------------------------------------ commands

    async def ask(self, entity_id: str, command: Any) -> Any:
        """Process ``command`` on ``entity_id``'s core; its reply or typed error (see
        :meth:`EntityCore.handle`)."""
        return await self._call(entity_id, command)

    async def state(self, entity_id: str) -> Any:
        """The current state of ``entity_id`` (after every durable event; see
        :attr:`EntityCore.state`), activating (recovering) it if needed. Read-only: no command,
        no journal write. Raises like :meth:`get_or_activate`."""
        with self._in_flight(entity_id):
            return (await self.get_or_activate(entity_id)).state

    async def ask_ordered(self, entity_id: str, caller_id: str, seq: int, command: Any) -> Any:
        """Like :meth:`ask`, keeping ``caller_id``'s ``seq`` order (seq starts at 0 per new
        caller id and counts up by one; see :class:`raysource.runtime.ordering.CallerOrder`).

        The reorder buffer lives in the host, not in the core, so it survives passivation:
        a caller whose commands straddle a passivation continues its numbering on the fresh
        activation (a core-level buffer would wait for numbers the old core already took)."""
        self.aggregate_type.persistence_id(entity_id)
        order = self._orders.get(entity_id)
        if order is None:
            order = self._orders[entity_id] = CallerOrder(
                lambda cmd: asyncio.ensure_future(self._call(entity_id, cmd)),
                gap_timeout_s=self.order_gap_timeout_s,
            )
            while len(self._orders) > self.max_ordered_entities:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(entity_id)
        # admitted commands become tasks in seq order; a task's first step submits to the
        # mailbox (or queues behind the same activation/stop future), so order is kept
        return await order.submit(caller_id, seq, command)

    async def ask_many(
        self, entity_id: str, caller_id: str, first_seq: int, commands: list[Any]
    ) -> list[Any]:
        """:meth:`ask_ordered` for ``commands`` numbered ``first_seq, first_seq + 1, ...``;
        returns one outcome per command, in order: its reply, or its typed error *object*
        (never raised per command).

        Each command goes through :meth:`ask_ordered` exactly as if sent alone, so ordering
        (also against this caller's other calls), passivation and fencing behave as today. All
        of them are admitted before any is answered, so one flush can take the whole batch
        (group commit). Commands answered ``AggregateStoppedError`` (incl. ``PassivatedError``)
        were not applied; every other outcome is final. Re-sending exactly the not-applied ones
        runs nothing twice. After a passivation, handoff or retirement they are a *suffix* of
        the batch (mailbox order is seq order and a stop cuts the mailbox at one point), so
        re-sending them in order keeps the order too. A core that stops on its own (fenced, an
        unknown write outcome) while the batch is being admitted may leave a later part applied
        by a fresh activation: then order is kept only within each part (as for pipelined
        :meth:`ask_ordered` calls).

        Raises only for a bad ``entity_id`` (``ConfigError``) or a cancellation."""
        self.aggregate_type.persistence_id(entity_id)
        if len(commands) == 1:  # the common case (one caller, one command): no extra task
            try:
                return [await self.ask_ordered(entity_id, caller_id, first_seq, commands[0])]
            except Exception as exc:  # noqa: BLE001 - its outcome
                return [exc]
        tasks = [
            asyncio.ensure_future(self.ask_ordered(entity_id, caller_id, first_seq + i, c))
            for i, c in enumerate(commands)
        ]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException) and not isinstance(o, Exception):
                raise o  # cancellation, not a command outcome
        return outcomes

    async def _call(self, entity_id: str, command: Any) -> Any:
        with self._in_flight(entity_id):
            core = await self.get_or_activate(entity_id)
            # no await between the lookup and the submit: see get_or_activate
            try:
                return await core.handle(command)
            except AggregateStoppedError:
                if core.stopped and self._cores.get(entity_id) is core:
                    self._drop_failed(entity_id, core)  # fenced: the next command starts anew
                raise

    @contextmanager
    def _in_flight(self, entity_id: str) -> Iterator[None]:
        """Count a call on ``entity_id`` for its whole duration (the idle sweep skips busy
        entities). Refuses it (``OverloadedError``) beyond ``max_mailbox``/``max_in_flight``."""
        n = self._inflight.get(entity_id, 0)
        if self.max_mailbox is not None and n >= self.max_mailbox:
            self.stats.overloaded += 1
            raise OverloadedError(
                f"{self.aggregate_type.persistence_id(entity_id)}: mailbox "
                f"full ({n} calls in flight, limit {self.max_mailbox}); "
                "not applied, retry later"
            )
        if self.max_in_flight is not None and self._in_flight_total >= self.max_in_flight:
            self.stats.overloaded += 1
            raise OverloadedError(
                f"host of {self.aggregate_type.name!r} overloaded "
                f"({self._in_flight_total} calls in flight, limit "
                f"{self.max_in_flight}); not applied, retry later"
            )
        self._inflight[entity_id] = n + 1
        self._in_flight_total += 1
        try:
            yield
        finally:
            self._in_flight_total -= 1
            n = self._inflight[entity_id] - 1
            if n:
                self._inflight[entity_id] = n
            else:
                del self._inflight[entity_id]

    # ------------------------------------------------------------------ passivation

    async def passivate(self, entity_id: str, reason: DeactivationReason = "passivated") -> bool:
        """Stop ``entity_id``'s core after its queued commands; True if it was active.
        Commands arriving meanwhile wait and then go to a fresh activation (or get
        ``PassivatedError`` with ``reactivate=False``)."""
        core = self._cores.get(entity_id)
        if core is None:
            stopping = self._stopping.get(entity_id)
            if stopping is not None:
                await asyncio.shield(stopping)
            return False
        await self._stop_core(entity_id, self._begin_stop(entity_id, reason))
        return True

    def _begin_stop(self, entity_id: str, reason: DeactivationReason) -> EntityCore:
        """The synchronous half of a passivation: the core leaves the table (the next command
        waits for the stop, then activates anew) and is registered as stopping."""
        core = self._cores.pop(entity_id)
        self._stopping[entity_id] = asyncio.get_running_loop().create_future()
        self.stats.passivations[reason] = self.stats.passivations.get(reason, 0) + 1
        self._deactivated(entity_id, reason, core)
        return core

    async def _stop_core(self, entity_id: str, core: EntityCore) -> None:
        try:
            await core.stop()
        finally:
            self._add_stats(core)
            self._stopping.pop(entity_id).set_result(None)

    async def handoff(self, predicate: Callable[[str], bool]) -> int:
        """Passivate every entity whose id matches ``predicate`` (finishing queued work) and
        return how many were stopped, once none of them is active, activating or stopping
        here: a matching activation in progress is waited for and then stopped, and a stop in
        progress (idle, evicted) is waited for, so no write of theirs lands afterwards. With an
        ``admit`` gate that refuses them first, nothing matching is active when it returns."""
        n = 0
        for _ in range(100):  # each round ends what the previous one let in; bounded anyway
            activating = [f for e, f in self._activating.items() if predicate(e)]
            if activating:  # their waiters submit first (FIFO), then the stop below drains them
                await asyncio.gather(
                    *(asyncio.shield(f) for f in activating), return_exceptions=True
                )
            ids = [eid for eid in self._cores if predicate(eid)]
            stopping = [f for e, f in self._stopping.items() if predicate(e)]
            if not ids and not stopping and not activating:
                break
            results = await asyncio.gather(
                *(self.passivate(eid, "handoff") for eid in ids),
                *(asyncio.shield(f) for f in stopping),
            )
            n += sum(1 for r in results[: len(ids)] if r)
        return n

    async def forget_subject(self, subject: str) -> int:
        """A data subject was forgotten (its key destroyed, ``raysource forget``): if this
        type has personal fields, drop the subject's key from this host's cache and passivate
        every active aggregate here (after its queued work), since a live state, and the
        replies it remembers for idempotency keys, keep what was decoded before the forget;
        the next command recovers from the journal, where the subject now reads as the
        placeholder. Returns how many aggregates were stopped."""
        if not self.serialization.has_personal:
            return 0
        self.serialization.keys.drop(subject)
        return await self.handoff(lambda _eid: True)

    async def sweep(self) -> int:
        """Passivate entities idle for ``idle_timeout_s`` (none with a call in flight);
        returns how many. Runs periodically on its own; callable directly (tests)."""
        now = self._clock()
        self.hot.update(self._cores)  # the busiest entities (raysource.runtime.hot)
        self.hot.record(self.metrics, self.aggregate_type.name, self.metrics_host)
        idle = [
            eid
            for eid, core in self._cores.items()
            if eid not in self._inflight
            and core.queued == 0
            and now - core.last_activity >= self.idle_timeout_s
        ]
        results = await asyncio.gather(*(self.passivate(eid, "idle") for eid in idle))
        return sum(results)

    def _enforce_cap(self) -> None:
        """Past ``max_active``: passivate the least recently used, preferring entities
        without a call in flight, in the background (the activation that crossed the cap
        does not wait). Walks the LRU order only as far as it needs (no sort of every active
        entity per activation: with many active ones that sort was the stall)."""
        if self.max_active is None:
            return
        excess = len(self._cores) - self.max_active
        if excess <= 0:
            return
        victims: list[str] = []
        busy: list[str] = []
        for eid in self._cores:  # least recently used first
            if eid in self._inflight:
                if len(busy) < excess:
                    busy.append(eid)
                continue
            victims.append(eid)
            if len(victims) == excess:
                break
        victims.extend(busy[: excess - len(victims)])
        for eid in victims:  # out of the table now: a second crossing picks others
            core = self._begin_stop(eid, "evicted")
            task = asyncio.ensure_future(self._stop_core(eid, core))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _record_active(self) -> None:
        self.metrics.active_aggregates(
            self.aggregate_type.name, self.metrics_host, len(self._cores)
        )

    def _deactivated(self, entity_id: str, reason: DeactivationReason, core: EntityCore) -> None:
        self._record_active()
        self.metrics.passivation(self.aggregate_type.name, reason)
        log.log(
            logging.WARNING if reason == "fenced" else logging.INFO,
            "%s: deactivated (%s) at #%d",
            core.persistence_id,
            reason,
            core.sequence_nr,
            extra={**core.log_context(), "reason": reason},
        )
        if not self.reactivate or self._closed:
            self._retired.add(entity_id)
            # Commands held back for a predecessor can never run here now; the predecessor
            # will be refused too. Refuse them at once instead of after the gap timeout.
            order = self._orders.pop(entity_id, None)
            if order is not None:
                order.fail_all(self._passivated_error(entity_id))
        if self._on_deactivated is not None:
            try:
                self._on_deactivated(entity_id, reason)
            except Exception:
                log.exception("on_deactivated(%r, %r) failed", entity_id, reason)

    def _add_stats(self, core: EntityCore) -> None:
        s = self.stats
        s.commands += core.stats.commands
        s.writes += core.stats.writes
        s.events += core.stats.events
        s.flushes += core.stats.flushes
        s.failed_commands += core.stats.failed_commands
        s.snapshots += core.stats.snapshots
        s.repeats += core.stats.repeats

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="aggregate-host-sweep")

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                # shielded: close() cancels this loop, possibly from inside a passivation it
                # started (a dedicated host retires on passivation); that stop must finish
                await asyncio.shield(self.sweep())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("passivation sweep failed")

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Passivate everything (finishing queued work) and stop the sweeper. Idempotent.
        Later commands get ``PassivatedError``. Does not close the journal."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._activating:
            await asyncio.gather(
                *(asyncio.shield(f) for f in self._activating.values()), return_exceptions=True
            )
        await asyncio.gather(*(self.passivate(e, "closed") for e in list(self._cores)))
        for eid, order in list(self._orders.items()):  # held back, entity not active
            order.fail_all(self._passivated_error(eid))
        self._orders.clear()
        if self._stopping:
            await asyncio.gather(*(asyncio.shield(f) for f in self._stopping.values()))


def ids_matching(entity_ids: Iterable[str]) -> Callable[[str], bool]:
    """A :meth:`AggregateHost.handoff` predicate for an explicit set of entity ids."""
    wanted = frozenset(entity_ids)
    return wanted.__contains__
