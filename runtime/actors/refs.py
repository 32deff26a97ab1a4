"""Entity references: send commands to an aggregate wherever its host actor lives.

* :class:`Resolver` turns ``(aggregate type, entity id)`` into the Ray actor handle that hosts
  it (get-or-create) and forgets a handle that turned out stale. :class:`LocalResolver` creates
  the named host actors on the local Ray cluster; the sharding layer provides a coordinator-based
  resolver with node affinity behind the same two methods.
* :class:`EntityRef` is one *caller*: it numbers its commands (``caller_id``, ``seq``) so the
  host processes them in send order even when pipelined, and it unwraps Ray's error wrappers so
  callers see raysource errors.

Retry rule (never run a command twice): a command that failed with ``AggregateStoppedError``
(incl. ``PassivatedError``) or hit an actor that exited on purpose (retired after passivation)
was definitely not applied, so the ref re-resolves and re-sends it under a fresh caller id. A
host that died otherwise (crash, ``ray.kill``, lost node) leaves the outcome unknown: the ref
raises :class:`~raysource.journal.errors.HostCrashedError` and only forgets the handle.

Known limit: a re-sent command goes out under a fresh caller id, so if several pipelined
commands of one ref are re-sent at once (all were refused by a stopping activation), their
relative order is the order the failures came back in, not necessarily the send order.
Within one batch (:meth:`EntityRef.ask_many`) the not-applied commands are re-sent together in
batch order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from raysource.journal.errors import (
    AggregateStoppedError,
    AskTimeoutError,
    HostCrashedError,
    PassivatedError,
)
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.actors.host_actor import HostActor, HostSpec, actor_options
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec

__all__ = ["EntityRef", "LocalResolver", "Resolver", "unwrap_error"]

log = logging.getLogger(__name__)

_RETRY_DEADLINE_S = 30.0  # a retiring actor holds its name until a quiet period passed
_WAIT_FOR_NAME_S = 0.05  # poll interval while the resolver still returns a retiring actor


class Resolver(Protocol):
    """Finds (or creates) the host actor of an aggregate. Implementations cache handles."""

    def resolve(self, aggregate_type: AggregateType, entity_id: str) -> Any:
        """The actor handle hosting ``entity_id`` (created if needed). May block briefly."""
        ...

    def invalidate(self, aggregate_type: AggregateType, entity_id: str,
                   handle: Any = None) -> None:
        """Forget the cached handle (only if it is ``handle``, when given)."""
        ...


class LocalResolver:
    """Get-or-create named :data:`~raysource.runtime.actors.host_actor.HostActor` actors on the local Ray cluster.

    Placement per type: ``aggregate_type.placement`` unless ``placement`` overrides it per
    type name. ``host_settings`` (per type name) become :class:`HostSpec` fields, e.g.
    ``{"show": {"idle_timeout_s": 5, "max_active": 100}}``. ``shard_of(entity_id, n)`` routes
    hosted entities (default: :func:`raysource.runtime.shard_id.shard_of`).
    """

    def __init__(
        self,
        system: str,
        store: StoreSpec,
        *,
        namespace: str | None = None,
        placement: dict[str, str] | None = None,
        host_settings: dict[str, dict[str, Any]] | None = None,
        shard_of: Callable[[str, int], int] | None = None,
    ) -> None:
        self.system = system
        self.store = store
        self.namespace = namespace
        self.placement = dict(placement or {})
        self.host_settings = dict(host_settings or {})
        self._shard_of = shard_of
        self._handles: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def spec_for(self, aggregate_type: AggregateType, entity_id: str) -> HostSpec:
        placement = self.placement.get(aggregate_type.name, aggregate_type.placement)
        settings = self.host_settings.get(aggregate_type.name, {})
        if placement == "dedicated":
            return HostSpec(self.system, aggregate_type, self.store, "dedicated",
                            entity_id=entity_id, **settings)
        return HostSpec(self.system, aggregate_type, self.store, "hosted",
                        shard=self._shard(aggregate_type, entity_id), **settings)

    def _shard(self, aggregate_type: AggregateType, entity_id: str) -> int:
        if self._shard_of is None:
            self._shard_of = shard_of
        return self._shard_of(entity_id, aggregate_type.number_of_shards)

    def _key(self, spec: HostSpec) -> str:
        return spec.actor_name

    def resolve(self, aggregate_type: AggregateType, entity_id: str) -> Any:
        aggregate_type.persistence_id(entity_id)  # validate before touching Ray
        spec = self.spec_for(aggregate_type, entity_id)
        key = self._key(spec)
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = HostActor.options(**actor_options(spec, self.namespace)).remote(spec)
                self._handles[key] = handle
            return handle

    def invalidate(self, aggregate_type: AggregateType, entity_id: str,
                   handle: Any = None) -> None:
        key = self._key(self.spec_for(aggregate_type, entity_id))
        with self._lock:
            if handle is None or self._handles.get(key) is handle:
                self._handles.pop(key, None)

    def handles(self) -> list[Any]:
        """Every handle this resolver created or looked up (for shutdown in tests)."""
        with self._lock:
            return list(self._handles.values())

    def kill_all(self) -> None:
        """``ray.kill`` every cached host actor (tests, benchmarks) and forget them."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            try:
                ray.kill(h)
            except Exception:
                pass


def unwrap_error(err: BaseException) -> BaseException:
    """The raysource error behind Ray's wrappers (``RayTaskError`` -> its cause;
    ``GetTimeoutError`` -> ``AskTimeoutError``; a crashed actor -> ``HostCrashedError``)."""
    if isinstance(err, RayTaskError):
        cause = err.cause
        return cause if isinstance(cause, BaseException) else err
    if isinstance(err, (GetTimeoutError, asyncio.TimeoutError)):
        return AskTimeoutError("no reply within the timeout; the command may or may not run")
    if isinstance(err, RayActorError) and not _intended_exit(err):
        crashed = HostCrashedError(f"the host actor died with the command in flight: {err}")
        crashed.__cause__ = err
        return crashed
    return err


_INTENDED_EXIT_MARKS = ("INTENDED_USER_EXIT", "IntentionalSystemExit")


def _intended_exit(err: BaseException) -> bool:
    # A host calls exit_actor only once retired: its aggregates had stopped (queued work done)
    # and every later call was refused, so nothing in flight at the exit was applied. Ray says
    # so only in the message: ActorDiedError "INTENDED_USER_EXIT" for calls after the exit,
    # ActorUnavailableError "IntentionalSystemExit" for calls racing with it.
    return isinstance(err, RayActorError) and any(m in str(err) for m in _INTENDED_EXIT_MARKS)


def _fill(results: list[Any], indices: list[int], error: BaseException) -> list[Any]:
    for i in indices:
        results[i] = error
    return results


class _NotFreeYet(Exception):
    """Internal: the resolver still returns an activation that is retiring."""


def _actor_id(handle: Any) -> str:
    actor_id = getattr(handle, "_actor_id", None)  # Ray's ActorHandle; stable for years
    return actor_id.hex() if actor_id is not None else str(id(handle))


def _refused(err: BaseException) -> bool:
    """The host refused the command because it is retiring (it answers, then exits). A
    fenced core's plain ``AggregateStoppedError`` does not say that: a hosted actor lives on."""
    if isinstance(err, RayTaskError):
        err = err.cause if isinstance(err.cause, BaseException) else err
    return isinstance(err, PassivatedError)


def _retryable(err: BaseException) -> bool:
    """Definitely not applied: safe to re-send to a fresh activation."""
    if isinstance(err, RayTaskError):
        err = err.cause if isinstance(err.cause, BaseException) else err
    return isinstance(err, AggregateStoppedError) or _intended_exit(err)


class EntityRef:
    """A caller's reference to one aggregate. Commands sent through one ref are processed in
    send order (pipelined or not). Thread-safe; for concurrency, give each caller its own ref.

    ``ask(cmd, timeout=None)`` blocks for the reply or raises the typed error
    (``AskTimeoutError`` on timeout: outcome unknown). ``ask_async`` is its coroutine twin.
    ``tell(cmd)`` sends without waiting (failures are logged; not-applied ones re-sent).
    ``state(timeout=None)`` reads the current state (read-only; activates the aggregate).
    ``ask_many(cmds, timeout=None)`` / ``ask_many_async`` send a batch in one Ray call and
    return a reply or typed error object per command.
    ``actor`` is the current host handle for raw ``handle.ask.remote(cmd, entity_id)`` calls.
    """

    def __init__(self, aggregate_type: AggregateType, entity_id: str, resolver: Resolver) -> None:
        aggregate_type.persistence_id(entity_id)
        self.aggregate_type = aggregate_type
        self.entity_id = entity_id
        self.resolver = resolver
        self._lock = threading.Lock()
        self._handle: Any = None
        self._caller_id = ""
        self._seq = 0
        self._epoch = 0  # bumped whenever the caller id is renewed
        self._retired: list[str] = []  # actor ids of activations that refused us (retiring)

    @property
    def actor(self) -> Any:
        with self._lock:
            return self._current()

    def _current(self) -> Any:
        if self._handle is None:
            handle = self.resolver.resolve(self.aggregate_type, self.entity_id)
            if _actor_id(handle) in self._retired:
                # the name still leads to the activation that refused us: do not call it (calls
                # would delay its exit); wait for the resolver to return a fresh one
                self.resolver.invalidate(self.aggregate_type, self.entity_id, handle)
                raise _NotFreeYet()
            self._handle = handle
            self._caller_id = uuid.uuid4().hex
            self._seq = 0
            self._epoch += 1
        return self._handle

    def _send(self, command: Any) -> tuple[Any, int]:
        """Submit ``command`` with the next sequence number; returns (ObjectRef, epoch).
        Raises ``_NotFreeYet`` while only a retiring activation can be resolved."""
        with self._lock:
            handle = self._current()
            ref = handle.ask_ordered.remote(self.entity_id, self._caller_id, self._seq, command)
            self._seq += 1
            return ref, self._epoch

    def _renew(self, epoch: int, retired: bool = False) -> None:
        """The host of ``epoch`` is gone or stopped: re-resolve under a fresh caller id.
        ``retired``: it refused the command because it is retiring (never call it again)."""
        with self._lock:
            if epoch == self._epoch and self._handle is not None:
                if retired:
                    self._retired.append(_actor_id(self._handle))
                    del self._retired[:-8]
                self.resolver.invalidate(self.aggregate_type, self.entity_id, self._handle)
                self._handle = None

    def _not_free(self) -> PassivatedError:
        return PassivatedError(
            f"{self.aggregate_type.persistence_id(self.entity_id)}: the retiring activation "
            f"still holds the name after {_RETRY_DEADLINE_S}s; not applied"
        )

    def _give_up(self, epoch: int, err: BaseException) -> BaseException:
        out = unwrap_error(err)
        if isinstance(out, HostCrashedError):
            self._renew(epoch)
        return out

    # ------------------------------------------------------------------ sync

    def ask(self, command: Any, timeout: float | None = None) -> Any:
        """Send ``command`` and wait for the reply (raises the typed raysource error)."""
        return self._call(lambda: self._send(command), timeout)

    def state(self, timeout: float | None = None) -> Any:
        """The aggregate's current state (after every durable event), activating it if it is
        not active; read-only (no command, no journal write), so re-sent under the same rules
        as :meth:`ask`. Commands this ref sent but whose replies were not awaited may or may
        not be reflected."""
        return self._call(self._send_state, timeout)

    def _send_state(self) -> tuple[Any, int]:
        with self._lock:
            return self._current().state.remote(self.entity_id), self._epoch

    def _call(self, submit: Callable[[], tuple[Any, int]], timeout: float | None) -> Any:
        """Submit (``submit() -> (ObjectRef, epoch)``) and wait, re-submitting to a fresh
        activation while the answer is "not applied" (see the module docstring)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_until = time.monotonic() + _RETRY_DEADLINE_S
        while True:
            try:
                ref, epoch = submit()
            except _NotFreeYet:
                if time.monotonic() > retry_until:
                    raise self._not_free() from None
                time.sleep(_WAIT_FOR_NAME_S)
                continue
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return ray.get(ref, timeout=left)
            except (RayTaskError, RayActorError, GetTimeoutError) as err:
                if not _retryable(err) or time.monotonic() > retry_until:
                    raise self._give_up(epoch, err) from None
                self._renew(epoch, retired=_refused(err))

    # ------------------------------------------------------------------ async

    async def ask_async(self, command: Any, timeout: float | None = None) -> Any:
        """Coroutine twin of :meth:`ask`. Call (not just create) the coroutines in send order:
        the command is submitted when the coroutine first runs."""
        retry_until = time.monotonic() + _RETRY_DEADLINE_S

        async def once() -> Any:
            while True:
                try:
                    ref, epoch = self._send(command)
                except _NotFreeYet:
                    if time.monotonic() > retry_until:
                        raise self._not_free() from None
                    await asyncio.sleep(_WAIT_FOR_NAME_S)
                    continue
                try:
                    return await ref
                except (RayTaskError, RayActorError) as err:
                    if not _retryable(err) or time.monotonic() > retry_until:
                        raise self._give_up(epoch, err) from None
                    self._renew(epoch, retired=_refused(err))

        if timeout is None:
            return await once()
        try:
            return await asyncio.wait_for(once(), timeout)
        except asyncio.TimeoutError:
            raise AskTimeoutError(
                f"no reply from {self.aggregate_type.persistence_id(self.entity_id)} within "
                f"{timeout}s; the command may or may not run"
            ) from None

    # ------------------------------------------------------------------ batches

    def ask_many(self, commands: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """Send ``commands`` as one batch (one Ray call) and return one outcome per command, in
        order: its reply, or its typed error *object* (``CommandRejected``, ``HandlerError``,
        ``SerializationError``, ``PersistFailedError``, ... — never raised per command).

        Processed in order, after this ref's earlier commands and before its later ones, with
        one journal write for many commands (group commit). Re-sends follow :meth:`ask`:
        commands the host reports not applied (``AggregateStoppedError``/``PassivatedError``,
        for the whole batch or per command) are re-sent, in their original relative order, to
        a fresh activation under a fresh caller id. Where the outcome is unknown, every command
        of the batch not yet answered gets a ``HostCrashedError`` (the host died) or an
        ``AskTimeoutError`` (``timeout`` seconds passed) object: it may or may not have run.
        Raises only what submitting raises (e.g. an unpicklable command).
        """
        commands = list(commands)
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))  # indices without a final outcome yet
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_until = time.monotonic() + _RETRY_DEADLINE_S
        while pending:
            try:
                ref, epoch = self._send_batch([commands[i] for i in pending])
            except _NotFreeYet:
                if time.monotonic() > retry_until:
                    return _fill(results, pending, self._not_free())
                time.sleep(_WAIT_FOR_NAME_S)
                continue
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                outcomes = ray.get(ref, timeout=left)
            except (RayTaskError, RayActorError, GetTimeoutError) as err:
                if _retryable(err) and time.monotonic() <= retry_until:
                    self._renew(epoch, retired=_refused(err))
                    continue
                return _fill(results, pending, self._give_up(epoch, err))
            pending = self._settle(pending, outcomes, results, epoch, retry_until)
        return results

    async def ask_many_async(self, commands: Iterable[Any],
                             timeout: float | None = None) -> list[Any]:
        """Coroutine twin of :meth:`ask_many`. Like :meth:`ask_async`, the batch is submitted
        when the coroutine first runs: await (or schedule) them in send order."""
        commands = list(commands)
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        retry_until = time.monotonic() + _RETRY_DEADLINE_S

        async def run() -> None:
            while pending:
                try:
                    ref, epoch = self._send_batch([commands[i] for i in pending])
                except _NotFreeYet:
                    if time.monotonic() > retry_until:
                        _fill(results, pending, self._not_free())
                        pending.clear()
                        return
                    await asyncio.sleep(_WAIT_FOR_NAME_S)
                    continue
                try:
                    outcomes = await ref
                except (RayTaskError, RayActorError) as err:
                    if _retryable(err) and time.monotonic() <= retry_until:
                        self._renew(epoch, retired=_refused(err))
                        continue
                    _fill(results, pending, self._give_up(epoch, err))
                    pending.clear()
                    return
                pending[:] = self._settle(list(pending), outcomes, results, epoch, retry_until)

        if timeout is None:
            await run()
        else:
            try:
                await asyncio.wait_for(run(), timeout)
            except asyncio.TimeoutError:
                _fill(results, pending, AskTimeoutError(
                    f"no reply from {self.aggregate_type.persistence_id(self.entity_id)} within "
                    f"{timeout}s; the command may or may not run"))
        return results

    def _send_batch(self, commands: list[Any]) -> tuple[Any, int]:
        """Submit ``commands`` numbered from the next sequence number on (the numbering
        advances by ``len(commands)``); returns (ObjectRef, epoch). Raises ``_NotFreeYet``
        like :meth:`_send`."""
        with self._lock:
            handle = self._current()
            ref = handle.ask_batch.remote(self.entity_id, self._caller_id, self._seq, commands)
            self._seq += len(commands)
            return ref, self._epoch

    def _settle(self, pending: list[int], outcomes: list[Any], results: list[Any],
                epoch: int, retry_until: float) -> list[int]:
        """Record the final outcomes of one batch call; returns the indices to re-send (not
        applied), renewing the caller id if there are any."""
        if len(outcomes) != len(pending):
            raise RuntimeError(f"ask_batch answered {len(outcomes)} outcomes for "
                               f"{len(pending)} commands")
        again: list[int] = []
        retired = False
        for i, outcome in zip(pending, outcomes):
            if isinstance(outcome, AggregateStoppedError) and time.monotonic() <= retry_until:
                again.append(i)
                retired = retired or isinstance(outcome, PassivatedError)
            else:
                results[i] = outcome
        if again:
            self._renew(epoch, retired=retired)
        return again

    def submit(self, command: Any) -> Any:
        """Send ``command`` now and return the raw ObjectRef (no retry, no unwrapping):
        the building block for pipelining from synchronous code."""
        return self._send(command)[0]

    # ------------------------------------------------------------------ fire and forget

    def tell(self, command: Any) -> None:
        """Send ``command`` without waiting. Order with this ref's other commands is kept.
        A not-applied failure is re-sent (at the end of the order); other failures are
        logged."""
        self._tell(command, time.monotonic())

    def _tell(self, command: Any, started: float) -> None:
        try:
            ref, epoch = self._send(command)
        except _NotFreeYet:
            if time.monotonic() - started > _RETRY_DEADLINE_S:
                log.warning("tell %r: %r", type(command).__qualname__, self._not_free())
                return
            threading.Timer(_WAIT_FOR_NAME_S, self._tell, (command, started)).start()
            return
        ref.future().add_done_callback(lambda f: self._tell_done(f, command, epoch, started))

    def _tell_done(self, fut: Any, command: Any, epoch: int, started: float) -> None:
        err = fut.exception()
        if err is None:
            return
        if _retryable(err) and time.monotonic() - started < _RETRY_DEADLINE_S:
            self._renew(epoch, retired=_refused(err))
            self._tell(command, started)
            return
        log.warning("tell %r to %s failed: %r", type(command).__qualname__,
                    self.aggregate_type.persistence_id(self.entity_id), unwrap_error(err))

    def __repr__(self) -> str:
        return f"EntityRef({self.aggregate_type.persistence_id(self.entity_id)!r})"
