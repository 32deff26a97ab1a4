"""The Ray host actor: an :class:`~raysource.runtime.host.AggregateHost` inside an async Ray actor.

Two placements, one class:

* **dedicated** (``HostSpec.entity_id`` set): the actor hosts one aggregate and is named
  ``"{system}:{persistence_id}"``, so Ray's named-actor registry keeps one live activation per
  aggregate. When the aggregate passivates (idle), is handed off or is fenced, the actor
  *retires*: every later call fails with :class:`~raysource.runtime.errors.PassivatedError` (not
  applied; a retry reaches a fresh activation), and after ``retire_grace_s`` it exits, freeing its
  name.
* **hosted**, shared (``HostSpec.slot`` set; what the sharding layer creates): the actor hosts
  the aggregates of *many* shards of one type on one node, named
  ``"{system}:hosts:{type}:{node id}:{slot}"``. A type has ``hosts_per_node`` of them per node
  (a host setting, default :data:`DEFAULT_HOSTS_PER_NODE`), and shard ``s`` goes to slot
  ``s % hosts_per_node``. Each aggregate has its own core and mailbox and is passivated on its
  own (idle timeout, ``max_active`` cap over the whole actor). The actor serves a shard only
  once ``HostSpec.owner`` confirmed its node is the shard's home; other calls answer
  ``AggregateStoppedError`` (not applied; references re-resolve): see
  :mod:`raysource.runtime.actors.shard_gate`. ``handoff([shard])`` revokes the shard, then
  returns once none of its aggregates is active, activating or stopping here (queued commands
  finish first); the actor and its other shards go on. It retires only on ``handoff(None)``.
* **hosted**, one shard (``HostSpec.shard`` set; test doubles and benchmarks): the actor hosts
  the aggregates of one shard, named ``"{system}:shard:{type}:{shard}"``, and retires on
  the handoff of its shard.

Public raw-handle API (every method is a coroutine; call ``handle.<method>.remote(...)`` and
``ray.get`` the ObjectRef; a raysource error raised in the actor reaches ``ray.get`` as Ray's
``RayTaskError`` wrapper, which is also an instance of the raysource error class)::

    ask(command, entity_id=None) -> reply         # dedicated: entity_id defaults to its entity
    ask_ordered(entity_id, caller_id, seq, command) -> reply   # per-caller order (refs use it)
    ask_many(entity_id, caller_id, first_seq, commands) -> [reply or error object, ...]
    ask_batches([Call(entity_id, caller_id, first_seq, commands), ...]) -> [outcomes or error]
    state(entity_id=None) -> state                # read-only; activates if needed
    passivate(entity_id=None) -> bool             # stop after queued work
    handoff(shards=None) -> int                   # None: stop everything, retire; else stop
                                                  # (and revoke) only those shards' aggregates
    info() -> dict                                # entities, stats, node id, pid, memory
    ping() -> "pong"

A ``command`` may be a :class:`~raysource.runtime.idempotency.Keyed` envelope (the command and
its idempotency key; references send every command so unless the type has keys off): it passes
through unchanged, and the aggregate applies each key at most once.

Actor options (:func:`actor_options`): detached, ``get_if_exists``, ``max_restarts=0`` (the next
activation recovers from the journal; a Ray restart would re-run ``__init__`` anyway),
``num_cpus=0.01`` (so node affinity works), ``max_concurrency=1000`` (pipelining).
No ``max_task_retries``: a retried append would be at-least-once.

Size: ~530 lines: the host actor's whole Ray surface (every remote method, with the contract
its callers rely on, in its docstring). Moving activation and retirement out into
collaborators is the "shorter hot path" work of issue 24, part 4.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import ray

from raysource.journal.errors import ConfigError
from raysource.runtime.actors.cluster import host_name, shard_host_name, shared_host_name
from raysource.runtime.actors.live import LivePublisher
from raysource.runtime.actors.protocol import Call
from raysource.runtime.actors.ray_metrics import RayMetrics
from raysource.runtime.actors.shard_gate import ShardGate, ShardOwner, slot_of
from raysource.runtime.aggregate import AggregateType, Placement
from raysource.runtime.errors import PassivatedError
from raysource.runtime.host import AggregateHost
from raysource.runtime.logs import configure_from_env
from raysource.runtime.stores import StoreSpec, open_stores, serialization_for, timer_store_for

__all__ = [
    "DEFAULT_HOSTS_PER_NODE",
    "HostActor",
    "HostSpec",
    "Outcome",
    "ShardOwner",
    "actor_options",
    "slot_of",
]  # the last two re-exported from shard_gate

DEFAULT_HOSTS_PER_NODE = 2
"""Shared host actors per (hosted type, node) unless the type's host settings say
``hosts_per_node``. Chosen from benchmarks/peer/hosts_layout.py (W2, 1,000 aggregates, 32
shards, 2 cores, two runs): 2 and 4 tie on commands/s and p99 within the noise (787 vs 730
cmd/s, p99 176 vs 252 ms in the calmer run), 2 uses 15% less memory; 32 (one per shard) had
a third of their throughput at three times the memory."""

Outcome = Any
"""One command's result in :meth:`HostActor.ask_many`: its reply, or its typed error as an
exception object (a reply is told from an error by ``isinstance(o, BaseException)``, so an
aggregate whose replies are exceptions cannot use batches)."""

log = logging.getLogger(__name__)

# RAYSOURCE_LIVE_READSIDE=0 turns the read side's live path off in host actors.
LIVE_READSIDE = os.environ.get("RAYSOURCE_LIVE_READSIDE", "1") != "0"


@dataclass(frozen=True)
class HostSpec:
    """Everything a host actor needs, picklable. Dedicated: ``entity_id`` set (it may also
    carry its entity's ``shard``, for :meth:`HostActor.handoff`). Hosted: ``slot`` (a shared
    host; with ``node_id``, its name, and ``owner``, its ownership check, None: every shard
    of the slot) or ``shard`` (a one-shard host). ``idle_timeout_s`` overrides the type's;
    ``max_active`` caps the active aggregates of one host actor.

    ``hosts_per_node`` (a host setting, default :data:`DEFAULT_HOSTS_PER_NODE`, at most the
    type's ``number_of_shards``): how many shared host actors a hosted type gets per node;
    shard ``s`` goes to slot ``s % hosts_per_node``. Fewer, busier processes: less memory
    and faster cold starts; more: more CPU cores for one type."""

    system: str
    aggregate_type: AggregateType
    store: StoreSpec
    placement: Placement = "dedicated"
    entity_id: str | None = None
    shard: int | None = None
    max_active: int | None = None
    max_concurrent_recoveries: int = 8
    idle_timeout_s: float | None = None
    max_batch: int = 256
    max_mailbox: int | None = 1_000  # calls in flight per aggregate (OverloadedError beyond)
    max_in_flight: int | None = 10_000  # calls in flight per host actor (OverloadedError beyond)
    retire_grace_s: float = 0.3  # quiet time (no calls) a retired actor waits before exiting
    hosts_per_node: int | None = None  # None: DEFAULT_HOSTS_PER_NODE
    slot: int | None = None
    node_id: str | None = None
    owner: ShardOwner | None = None

    def __post_init__(self) -> None:
        hosts = self.hosts_per_node
        if hosts is not None and (
            isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1
        ):
            raise ConfigError(f"hosts_per_node must be an int >= 1, got {hosts!r}")
        if self.placement == "dedicated":
            if self.entity_id is None or self.slot is not None:
                raise ConfigError("a dedicated host needs entity_id and no slot")
            self.aggregate_type.persistence_id(self.entity_id)
        elif self.placement == "hosted":
            if self.entity_id is not None or (self.shard is None) == (self.slot is None):
                raise ConfigError(
                    "a hosted host needs exactly one of shard and slot, and no entity_id"
                )
            if self.slot is not None and not 0 <= self.slot < self.hosts:
                raise ConfigError(f"slot {self.slot} out of range for {self.hosts} hosts")
        else:
            raise ConfigError(f"unknown placement {self.placement!r}")

    @property
    def hosts(self) -> int:
        """Shared host actors of this type per node (``hosts_per_node`` or the default,
        at most the type's number of shards)."""
        return min(
            self.hosts_per_node or DEFAULT_HOSTS_PER_NODE, self.aggregate_type.number_of_shards
        )

    @property
    def actor_name(self) -> str:
        if self.placement == "dedicated":
            assert self.entity_id is not None
            return host_name(self.system, self.aggregate_type.persistence_id(self.entity_id))
        if self.slot is not None:
            return shared_host_name(
                self.system, self.aggregate_type.name, self.node_id or "local", self.slot
            )
        assert self.shard is not None
        return shard_host_name(self.system, self.aggregate_type.name, self.shard)


def actor_options(spec: HostSpec, namespace: str | None = None, **overrides: Any) -> dict:
    """The ``HostActor.options(...)`` for ``spec`` (get-or-create by name); ``overrides`` may
    add e.g. a ``scheduling_strategy`` for node affinity."""
    opts: dict[str, Any] = dict(
        name=spec.actor_name,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=0,
        num_cpus=0.01,
        max_concurrency=1000,
    )
    if namespace is not None:
        opts["namespace"] = namespace
    opts.update(overrides)
    return opts


class _HostActor:
    """See the module docstring (this is the class behind :data:`HostActor`)."""

    def __init__(self, spec: HostSpec) -> None:
        configure_from_env()  # RAYSOURCE_LOG_JSON=1: JSON lines in this worker's log
        self.spec = spec
        # Ray export plus the in-memory values info() returns; outlives host re-opens
        self._metrics = RayMetrics()
        self._host: AggregateHost | None = None
        self._opening: asyncio.Future | None = None
        self._retired: PassivatedError | None = None
        self._retire_reason: str | None = None
        self._created = time.time()
        self._calls = 0
        self._open_s: float | None = None
        self._last_call = time.monotonic()
        self._in_calls = 0  # calls into the host in progress (_through_host)
        # a shared host: the shards it serves (None: a dedicated or one-shard host)
        self._gate = (
            None
            if spec.slot is None
            else ShardGate(
                spec.actor_name,
                spec.aggregate_type.name,
                spec.aggregate_type.number_of_shards,
                spec.hosts,
                spec.slot,
                spec.owner,
            )
        )
        self._watchdog: asyncio.Task | None = None
        # the read side's live path: acknowledged events to subscribed projection workers
        self._live = LivePublisher() if LIVE_READSIDE else None
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        # A dedicated actor whose aggregate never became active (no call, failed recovery)
        # has no core to passivate: without this it would live forever (it is detached).
        if self.spec.placement != "dedicated" or self._watchdog is not None:
            return
        try:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        except RuntimeError:  # no loop in __init__ (Ray runs it in the actor's loop today)
            pass

    async def _watch(self) -> None:
        idle = self.spec.idle_timeout_s or self.spec.aggregate_type.idle_timeout_s
        while self._retired is None:
            await asyncio.sleep(min(idle / 4, 5.0))
            busy = self._host is not None and (self._host.active or self._host.busy)
            if not busy and time.monotonic() - self._last_call >= idle:
                self._retire("idle")

    def _touch(self) -> None:
        self._calls += 1
        self._last_call = time.monotonic()
        self._start_watchdog()

    # ------------------------------------------------------------------ lifecycle

    async def _get_host(self) -> AggregateHost:
        if self._retired is not None:
            raise self._retired
        if self._host is not None:
            return self._host
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)
        if self._retired is not None:
            raise self._retired
        assert self._host is not None
        return self._host

    async def _open(self) -> None:
        spec = self.spec
        started = time.perf_counter()
        try:
            journal, snapshots = await self._open_stores()
        except BaseException:
            self._opening = None  # the next call tries again
            raise
        self._host = AggregateHost(
            spec.aggregate_type,
            journal,
            snapshots,
            serialization_for(spec.aggregate_type, spec.store, journal),
            writer_prefix=f"{spec.actor_name}@{os.getpid()}:{uuid.uuid4().hex[:8]}",
            max_active=spec.max_active,
            max_concurrent_recoveries=spec.max_concurrent_recoveries,
            idle_timeout_s=spec.idle_timeout_s,
            reactivate=spec.placement == "hosted",
            max_batch=spec.max_batch,
            max_mailbox=spec.max_mailbox,
            max_in_flight=spec.max_in_flight,
            on_deactivated=self._on_deactivated,
            metrics=self._metrics,
            metrics_host=(
                "dedicated"
                if spec.placement == "dedicated"
                else f"shard-{spec.shard}"
                if self._gate is None
                else f"hosts-{spec.slot}"
            ),
            on_durable=self._live.publish if self._live is not None else None,
            timer_store=timer_store_for(spec.store, journal),
            admit=self._gate.refusal if self._gate is not None else None,
        )
        if self._live is not None:
            self._live.refresh()  # find the subscribers before the first append
        self._open_s = time.perf_counter() - started

    async def _open_stores(self) -> tuple[Any, Any]:
        """The journal and snapshot store (a warm pool host hands over ones it opened while
        idle: ``raysource.runtime.actors.pooled_host``)."""
        return await open_stores(self.spec.store)

    def _on_deactivated(self, entity_id: str, reason: str) -> None:
        if self.spec.placement == "dedicated" and entity_id == self.spec.entity_id:
            self._retire(reason)

    def _retire(self, reason: str) -> None:
        if self._retired is not None:
            return
        self._retire_reason = reason
        self._retired = PassivatedError(
            f"{self.spec.actor_name}: {reason}; not applied, retry reaches a fresh activation"
        )
        task = asyncio.ensure_future(self._exit_later())
        # exit_actor raises AsyncioActorExit inside the task: that is the intended ending
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _exit_later(self) -> None:
        # Let the stop finish and in-flight calls get their answer, then free the name.
        if self._host is not None:
            await self._host.close()
            # Bounded: the name stays taken until we exit, and callers are waiting for it
            # (the driver's Cluster.shutdown can take seconds; the process exit frees it all).
            # the journal last: it owns the session
            for store in (self._host.snapshot_store, self._host.journal):
                try:
                    await asyncio.wait_for(store.close(), 0.5)
                except Exception:
                    log.info("closing %r did not finish cleanly", store)
        # Exit only after a quiet period: a call that reaches an exiting actor may hang in Ray
        # for seconds before it fails. Refs stop calling a handle they saw retire, so the
        # quiet period comes; the cap bounds how long a chatty stranger can keep the name.
        grace = self.spec.retire_grace_s
        deadline = time.monotonic() + max(30 * grace, 10.0)
        while True:
            quiet = time.monotonic() - self._last_call
            if (quiet >= grace and not self._in_calls) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(max(grace - quiet, 0.02))
        log.info("%s retired (%s), exiting", self.spec.actor_name, self._retire_reason)
        ray.actor.exit_actor()

    def _entity(self, entity_id: str | None) -> str:
        if entity_id is None:
            if self.spec.entity_id is None:
                raise ConfigError(f"{self.spec.actor_name}: hosted placement needs entity_id")
            return self.spec.entity_id
        if self.spec.entity_id is not None and entity_id != self.spec.entity_id:
            raise ConfigError(
                f"{self.spec.actor_name} hosts only {self.spec.entity_id!r}, not {entity_id!r}"
            )
        return entity_id

    async def _through_host(
        self, entity_id: str | None, call: Callable[[AggregateHost, str], Awaitable[Any]]
    ) -> Any:
        """Every call into the host: counts it in flight (a retiring actor waits for a quiet
        moment), checks the entity (a shared host: that it may serve its shard), opens the
        stores on first use, then runs ``call``."""
        self._touch()
        eid = self._entity(entity_id)
        self._in_calls += 1
        try:
            if self._gate is not None:
                await self._gate.admit(eid)
            return await call(await self._get_host(), eid)
        finally:
            self._in_calls -= 1

    # ------------------------------------------------------------------ public API

    async def ask(self, command: Any, entity_id: str | None = None) -> Any:
        """Process ``command`` (on ``entity_id``; dedicated: its own entity) and return the
        reply once its events are durable, or raise the typed error (``CommandRejected``,
        ``UnknownCommandError``, ``HandlerError``, ``SerializationError``,
        ``PersistFailedError``, ``AggregateStoppedError``/``PassivatedError``: not applied)."""
        return await self._through_host(entity_id, lambda h, e: h.ask(e, command))

    async def ask_ordered(
        self, entity_id: str | None, caller_id: str, seq: int, command: Any
    ) -> Any:
        """Like :meth:`ask`; commands of one ``caller_id`` are processed in ``seq`` order
        (0, 1, 2, ... per caller id; a new caller id after any ``AggregateStoppedError``)."""
        return await self._through_host(
            entity_id, lambda h, e: h.ask_ordered(e, caller_id, seq, command)
        )

    async def ask_many(
        self, entity_id: str | None, caller_id: str, first_seq: int, commands: list[Any]
    ) -> list[Outcome]:
        """Process ``commands`` in order as numbers ``first_seq, first_seq + 1, ...`` of
        ``caller_id`` (the numbering of :meth:`ask_ordered`, shared with it) and return one
        :data:`Outcome` per command: its reply or its typed error object (see :meth:`ask`).

        All commands enter the mailbox before any is answered, so group commit writes them
        together. Which commands were applied:

        * the call *raises* ``PassivatedError`` (this actor is retiring) or a store-open error:
          none of them (nothing was submitted);
        * an outcome that is an ``AggregateStoppedError``/``PassivatedError``: that command was
          not applied (safe to re-send to a fresh activation, under a new caller id); after a
          passivation these are a suffix of the batch (see
          :meth:`raysource.runtime.host.AggregateHost.ask_many`);
        * any other outcome (a reply, ``CommandRejected``, ``PersistFailedError``,
          ``WriteOutcomeUnknownError``, ...): final, exactly as :meth:`ask` would report it.
        """
        return await self._through_host(
            entity_id, lambda h, e: h.ask_many(e, caller_id, first_seq, list(commands))
        )

    async def ask_batches(self, groups: list[Call]) -> list[list[Outcome] | BaseException]:
        """Several :meth:`ask_many` calls in one Ray call (references coalesce concurrent
        calls of one process to this actor: ``raysource.runtime.actors.coalesce``): each group
        is the arguments of one :meth:`ask_many`, run exactly as that call (groups admitted in
        order); one result per group: its outcome list, or as an object the error its
        :meth:`ask_many` raised (e.g. ``PassivatedError``: none of that group was applied)."""

        async def one(group: Call) -> Any:
            try:
                return await self.ask_many(*group)
            except Exception as exc:  # that group's call failed; its batch-mates go on
                return exc

        return list(await asyncio.gather(*(one(g) for g in groups)))

    async def activate_many(self, entity_ids: list[str]) -> dict[str, BaseException]:
        """Activate these aggregates together (a shard moving in, a restart: one batch of
        claims and reads, ``raysource.runtime.bulk_recovery``); returns the ones that could
        not be activated with their errors (e.g. ``AggregateStoppedError``: not this host's
        shard). Nothing is applied to them."""

        async def one(eid: str) -> None:
            await self._through_host(eid, lambda h, e: h.get_or_activate(e))

        outcomes = await asyncio.gather(*(one(e) for e in entity_ids), return_exceptions=True)
        failed = {e: o for e, o in zip(entity_ids, outcomes) if isinstance(o, BaseException)}
        for o in failed.values():
            if not isinstance(o, Exception):
                raise o
        return failed

    async def state(self, entity_id: str | None = None) -> Any:
        """The aggregate's current state (after every durable event), activating it if it is
        not active. Read-only: no journal write. ``PassivatedError`` once retired."""
        return await self._through_host(entity_id, lambda h, e: h.state(e))

    async def passivate(self, entity_id: str | None = None) -> bool:
        """Stop the aggregate after its queued commands; True if it was active. A dedicated
        host then retires and exits."""
        self._last_call = time.monotonic()
        eid = self._entity(entity_id)
        if self._host is None or self._retired is not None:
            if self.spec.placement == "dedicated":
                self._retire("passivated")
            return False
        return await self._host.passivate(eid)

    async def handoff(self, shards: Collection[int] | None = None) -> int:
        """None: stop every aggregate (after its queued work), retire and exit. A shared host
        given ``shards``: revoke them (later calls of theirs answer ``AggregateStoppedError``)
        and stop only their aggregates, after their queued work; returns once none of them is
        active here. A one-shard host: as None if its shard is in ``shards``, else nothing.
        Returns how many aggregates were stopped."""
        if shards is not None and self._gate is not None:
            moving = self._gate.revoke(shards)  # before any await: nothing of theirs admitted
            return 0 if self._host is None else await self._host.handoff(moving)
        if shards is not None and self.spec.shard not in shards:
            return 0
        n = 0
        if self._host is not None and self._retired is None:
            n = await self._host.handoff(lambda _eid: True)
        self._retire("handoff")
        return n

    async def forget_subject(self, subject: str) -> int:
        """:meth:`AggregateHost.forget_subject` here (a dedicated host whose aggregate stops
        then retires); how many aggregates were stopped."""
        if self._host is None or self._retired is not None:
            return 0
        return await self._host.forget_subject(subject)

    async def info(self) -> dict[str, Any]:
        """Placement, name, node id, pid, memory (rss/uss bytes), retirement and the host's
        entities and counters (``stats.writes`` vs ``stats.commands`` shows group commit);
        ``metrics`` is this actor's :meth:`raysource.runtime.metrics.Metrics.snapshot`."""
        out: dict[str, Any] = {
            "name": self.spec.actor_name,
            "placement": self.spec.placement,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "retired": self._retire_reason,
            "calls": self._calls,
            "uptime_s": time.time() - self._created,
            "stores_open_s": self._open_s,
            "metrics": self._metrics.snapshot(),
            "metrics_forward_errors": self._metrics.forward_errors,
            "shards": [self.spec.shard] if self._gate is None else self._gate.granted,
            # the read side's live path (None: off, RAYSOURCE_LIVE_READSIDE=0)
            "live": None
            if self._live is None
            else {"published": self._live.published, "dropped": self._live.dropped},
        }
        try:
            import psutil

            mem = psutil.Process().memory_full_info()
            out["rss"], out["uss"] = mem.rss, mem.uss
        except Exception:  # psutil ships with Ray; memory is diagnostics only
            pass
        if self._host is not None:
            out.update(self._host.info())
            shared = getattr(self._host.journal, "shared", None)  # Cassandra, epoch guard
            if shared is None:
                shared = getattr(getattr(self._host.journal, "inner", None), "shared", None)
            if shared is not None:  # event-batch requests and the appends they carried
                out["shared_writes"] = dataclasses.asdict(shared.stats)
            out["recovery"] = {
                "activations": self._host.stats.activations,
                "recovery_s_total": self._host.stats.recovery_s_total,
                "recovery_s_max": self._host.stats.recovery_s_max,
                "events_replayed": self._host.stats.events_replayed,
            }
        return out

    async def ping(self) -> str:
        """Liveness check (does not open the stores)."""
        self._last_call = time.monotonic()
        return "pong"


HostActor = ray.remote(_HostActor)
"""The Ray actor class; create with ``HostActor.options(**actor_options(spec)).remote(spec)``."""
