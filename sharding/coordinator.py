"""The shard coordinator: who hosts which shard, kept as an event-sourced allocation table.

Two parts, so the logic is testable without Ray:

* :class:`~raysource.sharding.coordinator_state.CoordinatorState` (its own module) — pure state
  machine. Decisions (``decide_*``) read the state and
  return events; ``apply`` folds an event into the state. Replaying the stored events rebuilds
  exactly the live table.
* :class:`ShardCoordinator` — the async host: persists the events through any
  :class:`~raysource.journal.api.Journal` (persistence id ``"__coordinator__|<system>"``), recovers
  by replay when (re)started, polls node membership, re-allocates a dead node's shards, rebalances
  when nodes join (handing shards off first), and answers ``home(type, shard)``.
  ``raysource.sharding.ray_nodes.get_or_create_coordinator`` runs it as a named, detached,
  restartable Ray actor; this module itself imports no Ray.

The coordinator is not on the per-command path: callers ask ``home`` once per shard and cache.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import ConcurrentWriteError, ConfigError, WriterFencedError
from raysource.runtime.shard_id import shard_of
from raysource.sharding.allocation import NodeId, ShardId
from raysource.sharding.coordinator_state import (
    COORDINATOR_SERIALIZATION,
    CoordinatorEvent,
    CoordinatorState,
    NodeRemoved,
    ShardMoved,
    coordinator_persistence_id,
)
from raysource.sharding.errors import CoordinatorFencedError, NoLiveNodesError, ShardingError

__all__ = ["CoordinatorSettings", "HandoffTarget", "ShardCoordinator"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ host


@runtime_checkable
class HandoffTarget(Protocol):
    """What the coordinator calls on a node's shard region before moving a shard off it.

    ``handoff(shard)`` must stop the shard's aggregates on that node: let each finish the
    commands it has queued (their events durable), passivate it, and from then on refuse new
    commands for that shard with a "moved" answer so callers re-resolve. It returns (or its
    awaitable resolves) when nothing of the shard is active on the node any more. It must be
    idempotent and must not call the coordinator (the coordinator waits for it). A Ray actor
    handle with a ``handoff`` method qualifies (``handle.handoff.remote(shard)`` is awaited),
    as does any object whose ``handoff`` returns an awaitable or ``None``.
    """

    def handoff(self, shard: ShardId) -> Any: ...


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """``poll_interval``: seconds between membership checks (dead-node reallocation and one
    rebalance round each). ``max_moves``: shards moved per rebalance round. ``rebalance``:
    turn automatic rebalancing off (dead nodes are always handled). ``handoff_timeout``:
    seconds to wait for a region's handoff; on timeout or error the shard stays put this round.
    """

    poll_interval: float = 1.0
    max_moves: int = 2
    rebalance_threshold: int = 2
    rebalance: bool = True
    handoff_timeout: float = 10.0
    max_events_per_write: int = 100  # stay well inside one journal partition per batch

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.handoff_timeout <= 0:
            raise ConfigError("poll_interval and handoff_timeout must be > 0")
        if self.max_moves < 0 or self.rebalance_threshold < 2 or self.max_events_per_write < 1:
            raise ConfigError(f"invalid coordinator settings {self!r}")


async def _call_handoff(region: Any, shard: ShardId) -> None:
    method = region.handoff
    result = method.remote(shard) if hasattr(method, "remote") else method(shard)
    if result is not None and hasattr(result, "__await__"):
        await result


class ShardCoordinator:
    """Owns the allocation table of one raysource system. All public methods are coroutines.

    ``journal_factory`` builds the journal inside the hosting process (it must be picklable
    for Ray, which re-runs ``__init__`` after a crash); ``live_nodes`` returns the ids of the
    alive nodes (a blocking call; it runs on an executor thread).

    Startup recovers the table by replaying the coordinator's events, then (unless
    ``poll=False``) starts the membership loop. If the journal reports a
    ``ConcurrentWriteError`` another instance writes the table: this one stops its loop and
    raises ``CoordinatorFencedError`` from then on. After a write with an unknown outcome it
    re-reads its journal before deciding anything else.

    Regions (``register_region``) are kept in memory only: after a coordinator restart they
    must register again (a region should re-register when a coordinator call fails).
    """

    def __init__(
        self,
        system: str,
        journal_factory: Callable[[], Journal | Awaitable[Journal]],
        live_nodes: Callable[[], Sequence[NodeId]],
        settings: CoordinatorSettings | None = None,
        *,
        poll: bool = True,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        if not system or "|" in system:
            raise ConfigError(f"invalid system name {system!r}")
        self.system = system
        self.persistence_id = coordinator_persistence_id(system)
        self.settings = settings or CoordinatorSettings()
        self._journal_factory = journal_factory
        self._live_nodes_fn = live_nodes
        self._poll = poll
        self._on_fenced = on_fenced  # in Ray: end the process so Ray restarts a fresh instance
        self._writer_id = f"coordinator-{uuid.uuid4().hex[:12]}"
        self._state = CoordinatorState()
        self._seq = 0
        self._journal: Journal | None = None
        self._live: set[NodeId] = set()
        self._regions: dict[NodeId, Any] = {}
        self._moving: set[ShardId] = set()
        self._lock = asyncio.Lock()
        self._fenced: ConcurrentWriteError | WriterFencedError | None = None
        self._started: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        try:  # inside a Ray async actor a loop runs already: recover and poll without a caller
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._started = asyncio.ensure_future(self._startup())

    # ------------------------------------------------------------------ lifecycle

    async def _startup(self) -> None:
        loop = asyncio.get_running_loop()
        made = await loop.run_in_executor(None, self._journal_factory)
        # a factory may return a coroutine (e.g. an async Cassandra connect): finish it here
        self._journal = await made if inspect.isawaitable(made) else made
        # the activation's claim (epoch guard) comes before it reads its history: its reads and
        # appends then follow its own confirmed view, never a stale writer's unconfirmed tail
        await self._journal.begin_activation(self.persistence_id, self._writer_id)
        await self._catch_up()
        if self._poll:
            self._poller = asyncio.ensure_future(self._poll_loop())

    async def _ready(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._startup())
        started = self._started
        try:
            await asyncio.shield(started)
        except Exception:
            if started.done() and self._started is started:
                self._started = None  # the store was down: the next call tries again
            raise
        if self._fenced is not None:
            raise self._fenced_error()

    def _fenced_error(self) -> CoordinatorFencedError:
        return CoordinatorFencedError(
            f"coordinator {self._writer_id} of system {self.system!r} was fenced by another "
            f"instance and stopped serving ({self._fenced})"
        )

    async def ready(self) -> int:
        """Wait for recovery; returns the number of stored coordinator events."""
        await self._ready()
        return self._seq

    async def describe(self) -> dict[str, Any]:
        """Diagnostics: system, this instance's writer id (new after every restart), number of
        stored events, live nodes as of the last poll, registered regions."""
        await self._ready()
        return {
            "system": self.system,
            "instance": self._writer_id,
            "events": self._seq,
            "live_nodes": sorted(self._live),
            "regions": sorted(self._regions),
        }

    async def shutdown(self) -> None:
        """Stop the membership loop and close the journal. Idempotent."""
        if self._poller is not None:
            self._poller.cancel()
        if self._started is not None and self._journal is not None:
            await self._journal.close()

    async def _catch_up(self) -> None:
        assert self._journal is not None
        async for stored in self._journal.replay(self.persistence_id, self._seq + 1):
            event = COORDINATOR_SERIALIZATION.decode(
                stored.serializer_id,
                stored.manifest,
                bytes(stored.payload),
                persistence_id=stored.persistence_id,
                sequence_nr=stored.sequence_nr,
            )
            self._state.apply(event)  # type: ignore[arg-type]
            self._seq = stored.sequence_nr

    async def _persist(self, events: Sequence[CoordinatorEvent]) -> None:
        """Append ``events`` (in groups) and apply them. Callers hold ``self._lock``."""
        assert self._journal is not None
        step = self.settings.max_events_per_write
        for i in range(0, len(events), step):
            chunk = events[i : i + step]
            now = datetime.now(UTC)
            group = []
            for j, ev in enumerate(chunk, start=self._seq + 1):
                ser_id, manifest, payload = COORDINATOR_SERIALIZATION.encode(
                    ev, persistence_id=self.persistence_id, sequence_nr=j
                )
                group.append(
                    StoredEvent(
                        self.persistence_id,
                        j,
                        payload,
                        manifest,
                        ser_id,
                        now,
                        writer_id=self._writer_id,
                    )
                )
            try:
                await self._journal.append(group)
            except WriterFencedError as exc:
                # epoch guard: a newer instance claimed the journal, or one of our writes was
                # not confirmed; the group's outcome is unknown (the newer instance recovers it
                # if it landed) and nothing we append can be acknowledged any more: stop
                self._stop_fenced(exc)
                raise self._fenced_error() from exc
            except ConcurrentWriteError as exc:
                await self._catch_up()
                if await self._written_by_us(exc.sequence_nr):
                    # an earlier write of ours whose outcome was unknown landed after all: we
                    # are caught up now; the caller decides again on the current table
                    raise ShardingError(
                        f"coordinator {self.system!r}: an earlier write landed late; retry"
                    ) from exc
                self._stop_fenced(exc)
                raise self._fenced_error() from exc
            except BaseException:
                # Outcome unknown: the group may be stored. Re-read before the next decision.
                await self._catch_up()
                raise
            for ev in chunk:
                self._state.apply(ev)
            self._seq += len(chunk)

    def _stop_fenced(self, exc: ConcurrentWriteError | WriterFencedError) -> None:
        self._fenced = exc
        if self._poller is not None and self._poller is not asyncio.current_task():
            self._poller.cancel()
        log.error("coordinator %s fenced on %s: stops serving", self._writer_id, exc)
        if self._on_fenced is not None:
            self._on_fenced()

    async def _written_by_us(self, sequence_nr: int) -> bool:
        assert self._journal is not None
        async for stored in self._journal.replay(self.persistence_id, sequence_nr, sequence_nr):
            return stored.writer_id == self._writer_id
        return False

    async def _fresh_live(self) -> set[NodeId]:
        loop = asyncio.get_running_loop()
        nodes = await loop.run_in_executor(None, self._live_nodes_fn)
        self._live = self._state.usable(nodes)
        return self._live

    # ------------------------------------------------------------------ API

    async def register_type(self, type_name: str, number_of_shards: int) -> None:
        """Declare an aggregate type's shard count (idempotent). A different count for a known
        type raises ``ShardCountChangedError``."""
        await self._ready()
        async with self._lock:
            await self._persist(self._state.decide_register(type_name, number_of_shards))

    async def shard_counts(self) -> dict[str, int]:
        await self._ready()
        return dict(self._state.shard_counts)

    async def home(self, type_name: str, shard: int, *, refresh: bool = False) -> NodeId:
        """The node id hosting ``(type_name, shard)``; allocates it (least loaded live node)
        on first request and re-homes it at once if its node is not live. While the shard is
        being handed off, waits for the move. Membership is taken from the last poll unless
        ``refresh`` (pass it when re-resolving after the returned node failed you).
        ``ConfigError`` for an unknown type or out-of-range shard, ``NoLiveNodesError`` if no
        node is alive."""
        await self._ready()
        sid = ShardId(type_name, shard)
        current = self._state.owner.get(sid)
        if (
            current is not None
            and current in self._live
            and sid not in self._moving
            and not refresh
        ):
            return current
        async with self._lock:
            live = await self._fresh_live()
            await self._persist(self._state.decide_home(sid, live))
            return self._state.owner[sid]

    async def home_of(
        self, type_name: str, entity_id: str, *, refresh: bool = False
    ) -> tuple[int, NodeId]:
        """``(shard, node)`` for an entity of a registered type (see :meth:`home`)."""
        await self._ready()
        n = self._state.shard_counts.get(type_name)
        if n is None:
            raise ConfigError(f"aggregate type {type_name!r} is not registered")
        shard = shard_of(entity_id, n)
        return shard, await self.home(type_name, shard, refresh=refresh)

    async def allocation(self) -> dict[NodeId, list[ShardId]]:
        """The table: node id -> its shards (sorted)."""
        await self._ready()
        return {n: sorted(s) for n, s in sorted(self._state.allocation().items())}

    async def nodes(self) -> list[NodeId]:
        """The live node ids (fresh from the membership source)."""
        await self._ready()
        return sorted(await self._fresh_live())

    async def register_region(self, node_id: NodeId, region: Any) -> None:
        """Register the :class:`HandoffTarget` (the shard region) of ``node_id`` (replaces an older
        one)."""
        await self._ready()
        self._regions[node_id] = region

    async def tick(self) -> list[CoordinatorEvent]:
        """One membership round (what the loop runs every ``poll_interval``): re-home the
        shards of dead nodes, then (if enabled) one bounded rebalance round with handoff.
        Returns the events recorded."""
        await self._ready()
        async with self._lock:
            live = await self._fresh_live()
            events = self._state.decide_dead(live)
            await self._persist(events)
            for ev in events:
                if isinstance(ev, NodeRemoved):
                    self._regions.pop(ev.node, None)
            if self.settings.rebalance:
                events += await self._rebalance_round(live)
            return events

    async def begin_rebalance(self, max_moves: int | None = None) -> list[ShardMoved]:
        """Run one rebalance round now (also when automatic rebalancing is off)."""
        await self._ready()
        async with self._lock:
            return await self._rebalance_round(await self._fresh_live(), max_moves)

    async def _rebalance_round(
        self, live: set[NodeId], max_moves: int | None = None
    ) -> list[ShardMoved]:
        moves = self._state.plan_rebalance(
            live,
            self.settings.max_moves if max_moves is None else max_moves,
            self.settings.rebalance_threshold,
        )
        done: list[ShardMoved] = []
        for m in moves:
            region = self._regions.get(m.from_node)
            self._moving.add(m.shard)
            try:
                if region is not None:
                    await asyncio.wait_for(
                        _call_handoff(region, m.shard), self.settings.handoff_timeout
                    )
            except Exception as exc:  # noqa: BLE001 - the shard stays; retried next round
                log.warning(
                    "handoff of %s from %s failed (%r): not moved", m.shard, m.from_node, exc
                )
                continue
            else:
                ev = ShardMoved(m.shard.type_name, m.shard.shard, m.from_node, m.to_node)
                await self._persist([ev])
                done.append(ev)
            finally:
                self._moving.discard(m.shard)
        return done

    async def _poll_loop(self) -> None:
        while self._fenced is None:
            try:
                await self.tick()
            except CoordinatorFencedError:
                return
            except asyncio.CancelledError:
                raise
            except NoLiveNodesError:
                pass
            except Exception:  # noqa: BLE001 - a failed round is retried next interval
                log.exception("coordinator %s: membership round failed", self.system)
            await asyncio.sleep(self.settings.poll_interval)
