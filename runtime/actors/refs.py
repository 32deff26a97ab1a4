"""Entity references: send commands to an aggregate wherever its host actor lives.

Size: ~770 lines, most of it contract docstrings; the code is one retry loop
(``_until_answered``) shared by every call shape.

* :class:`Resolver` turns ``(aggregate type, entity id)`` into the Ray actor handle that hosts
  it (get-or-create) and forgets a handle that turned out stale. The sharding layer provides
  the coordinator-based resolver with node affinity; ``raysource.testing.local_resolver`` a
  test double that creates named host actors on the local Ray cluster directly.
* :class:`EntityRef` is one *caller*: it numbers its commands (``caller_id``, ``seq``) so the
  host processes them in send order even when pipelined, and it unwraps Ray's error wrappers so
  callers see raysource errors. Each call is written once, as a coroutine (``ask_async``,
  ``state_async``, ``ask_many_async``) over one retry loop; ``ask``/``state``/``ask_many`` are
  its blocking forms (the first attempt is sent from the caller's thread, the rest runs on a
  per-process reference loop) and ``tell`` its fire-and-forget form.

Retry rule (never run a command twice): a command that failed with ``AggregateStoppedError``
(incl. ``PassivatedError``) or hit an actor that exited on purpose (retired after passivation)
was definitely not applied, so the ref re-resolves and re-sends it under a fresh caller id. A
host that died otherwise (crash, ``ray.kill``, lost node) leaves the outcome unknown: the ref
raises :class:`~raysource.runtime.errors.HostCrashedError` and only forgets the handle; an
actor Ray reported dead (``ActorDiedError``) is never called again by this ref, even if the
resolver still returns it (a get-or-create by name can, until the GCS has processed the death):
the next call waits for a fresh activation instead of failing on the dead one again.

Idempotency keys (the type's ``idempotency.enabled``, the default): every command goes out as
:class:`~raysource.runtime.idempotency.Keyed` under a key, one per logical send (a uuid4) unless
the caller gives one (``idempotency_key=``, ``idempotency_keys=`` for a batch); every re-send of
that send reuses it, and the aggregate applies a key at most once. So the ref also re-sends
*outcome-unknown* failures (``HostCrashedError``, ``WriteOutcomeUnknownError``, any Ray
failure of the call) until the call's deadline (``timeout``, else ``default_timeout``), backing
off; once an attempt's outcome was unknown, a later "not applied" answer
(``PersistFailedError``, ``OverloadedError``, a recovery's ``JournalUnavailableError``) settles
nothing (the unknown write may still land) and is re-sent too. The caller sees a reply, a
rejection, another final error of the command (``HandlerError``, ...), or at the deadline an
``OutcomeUnknownError`` (``AskTimeoutError``, ``HostCrashedError``,
``WriteOutcomeUnknownError``) whose message names the key and whose ``idempotency_key``
attribute holds it: re-send with that key to learn the outcome.

Coalescing (``raysource.runtime.actors.coalesce``): every command goes to its host actor
through the process's coalescer of that actor, so concurrent calls from one process (any number
of refs, entities of one hosted actor) share Ray calls (``ask_batches``), and a command's reply
comes back with its batch-mates'. A sequential caller's call goes out alone, through the same
host method as before (``ask_ordered``/``ask_many``). Each command keeps its own caller id,
number, key, deadline and outcome; the retry rule below is applied per call as before.

Known limit: a re-sent command goes out under a fresh caller id, so if several pipelined
commands of one ref are re-sent at once (all were refused by a stopping activation), their
relative order is the order the failures came back in, not necessarily the send order.
Within one batch (:meth:`EntityRef.ask_many`) the not-applied commands are re-sent together in
batch order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from raysource.journal.errors import ConfigError, OutcomeUnknownError, UnserializableError
from raysource.runtime import tracing
from raysource.runtime.actors import coalesce, protocol
from raysource.runtime.actors.protocol import Call, Sent
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.errors import (
    AggregateStoppedError,
    AskTimeoutError,
    HostCrashedError,
    PassivatedError,
)
from raysource.runtime.idempotency import Keyed, key_of, naming_key, unsettled

__all__ = ["DEFAULT_TIMEOUT_S", "EntityRef", "Resolver", "unwrap_error"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRY_DEADLINE_S = 30.0  # a retiring actor holds its name until a quiet period passed
DEFAULT_TIMEOUT_S = 120.0  # a call without a timeout: its deadline (EntityRef.default_timeout)
_WAIT_FOR_NAME_S = 0.05  # poll interval while the resolver still returns a retiring actor
_UNKNOWN_BACKOFF_S = (0.02, 0.5)  # first and longest pause before re-sending an unknown outcome


class Resolver(Protocol):
    """Finds (or creates) the host actor of an aggregate. Implementations cache handles."""

    def resolve(self, aggregate_type: AggregateType, entity_id: str) -> Any:
        """The actor handle hosting ``entity_id`` (created if needed). May block briefly."""
        ...

    def invalidate(self, aggregate_type: AggregateType, entity_id: str, handle: Any = None) -> None:
        """Forget the cached handle (only if it is ``handle``, when given)."""
        ...


def unwrap_error(err: BaseException) -> BaseException:
    """The raysource error behind Ray's wrappers (``RayTaskError`` -> its cause;
    ``GetTimeoutError`` -> ``AskTimeoutError``; a crashed actor -> ``HostCrashedError``; an
    actor that exited on purpose -> ``PassivatedError``; any other Ray failure of the call ->
    ``HostCrashedError``, outcome unknown). Never a Ray error."""
    if isinstance(err, RayTaskError) and isinstance(err.cause, BaseException):
        return err.cause
    if isinstance(err, (GetTimeoutError, asyncio.TimeoutError)):
        return AskTimeoutError("no reply within the timeout; the command may or may not run")
    if _intended_exit(err):
        out: BaseException = PassivatedError(
            f"the host actor retired (exited on purpose) before the command ran; not applied: {err}"
        )
    elif isinstance(err, RayActorError):
        out = HostCrashedError(f"the host actor died with the command in flight: {err}")
    elif isinstance(err, RayError):  # e.g. a reply or argument Ray could not (de)serialize
        out = HostCrashedError(
            f"Ray failed the call ({type(err).__name__}); the outcome is unknown: {err}"
        )
    else:
        return err
    out.__cause__ = err
    return out


_INTENDED_EXIT_MARKS = ("INTENDED_USER_EXIT", "IntentionalSystemExit")


def _intended_exit(err: BaseException) -> bool:
    # A host calls exit_actor only once retired: its aggregates had stopped (queued work done)
    # and every later call was refused, so nothing in flight at the exit was applied. Ray says
    # so only in the message: ActorDiedError "INTENDED_USER_EXIT" for calls after the exit,
    # ActorUnavailableError "IntentionalSystemExit" for calls racing with it.
    return isinstance(err, RayActorError) and any(m in str(err) for m in _INTENDED_EXIT_MARKS)


class _GaveUp(Exception):
    """Internal: the retry rule gave up with ``error`` (a batch fills it in per command)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _RefLoop:
    """The event loop behind the blocking forms of the reference calls: one daemon thread per
    process, started on first use. The blocking form submits its first attempt in the caller's
    thread (keeping send order and any blocking resolve there), then waits here for the one
    async implementation to finish (retries included)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, daemon=True, name="raysource-refs"
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.get())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.get()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # pragma: no cover - a misuse that would deadlock
            coro.close()
            raise RuntimeError(
                "a blocking EntityRef call inside the references' own loop; "
                "await the *_async form instead"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


_LOOP = _RefLoop()


class _NotFreeYet(Exception):
    """Internal: the resolver still returns an activation that is retiring or dead."""


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

    Every call has a deadline: ``timeout=None`` means ``default_timeout`` (default
    ``DEFAULT_TIMEOUT_S``, 120 s; longer than the retry rule's 30 s), after which the call
    raises (or, per command, answers) ``AskTimeoutError``. Set ``default_timeout=None`` on a ref
    to wait without a deadline.
    """

    def __init__(
        self,
        aggregate_type: AggregateType,
        entity_id: str,
        resolver: Resolver,
        *,
        default_timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        aggregate_type.persistence_id(entity_id)
        if default_timeout is not None and not default_timeout > 0:
            raise ConfigError(f"default_timeout must be > 0 or None, got {default_timeout!r}")
        self.default_timeout = default_timeout
        self.aggregate_type = aggregate_type
        self.entity_id = entity_id
        self.resolver = resolver
        self._lock = threading.Lock()
        self._handle: Any = None
        self._caller_id = ""
        self._seq = 0
        self._epoch = 0  # bumped whenever the caller id is renewed
        # actor ids never to call again: activations that refused us (retiring; calls would
        # delay their exit) or that Ray reported dead (a get-or-create by name can still return
        # a killed actor until the GCS has processed its death)
        self._retired: list[str] = []
        # [event loop, asyncio.Lock, queued]: submissions waiting for a resolve off the loop
        self._turn: list[Any] | None = None

    @property
    def actor(self) -> Any:
        """The current host handle (resolved if needed; waits while the name still leads to
        a retiring or dead activation, ``PassivatedError`` after the retry deadline)."""
        return self._with_current(lambda handle: handle)

    def _with_current(self, use: Callable[[Any], T]) -> T:
        """``use(handle)`` under the lock, blocking while :meth:`_current` is
        :class:`_NotFreeYet` (for the synchronous callers: ``actor`` and ``submit``)."""
        until = time.monotonic() + _RETRY_DEADLINE_S
        while True:
            with self._lock:
                try:
                    handle = self._current()
                except _NotFreeYet:
                    pass
                else:
                    return use(handle)
            if time.monotonic() > until:
                raise self._not_free()
            time.sleep(_WAIT_FOR_NAME_S)

    def _current(self) -> Any:
        if self._handle is None:
            self._install(self.resolver.resolve(self.aggregate_type, self.entity_id))
        return self._handle

    def _install(self, handle: Any) -> None:
        """Make ``handle`` the current host (under ``_lock``), under a fresh caller id."""
        if _actor_id(handle) in self._retired:
            # the name still leads to an activation we must not call: wait for the
            # resolver to return a fresh one
            self.resolver.invalidate(self.aggregate_type, self.entity_id, handle)
            raise _NotFreeYet()
        self._handle = handle
        self._caller_id = uuid.uuid4().hex
        self._seq = 0
        self._epoch += 1

    def _renew(self, epoch: int, retired: bool = False) -> None:
        """The host of ``epoch`` is gone or stopped: re-resolve under a fresh caller id.
        ``retired``: it refused the command because it is retiring, or Ray reported it dead
        (never call it again)."""
        with self._lock:
            if epoch == self._epoch and self._handle is not None:
                if retired:
                    self._retired.append(_actor_id(self._handle))
                    del self._retired[:-8]
                self.resolver.invalidate(self.aggregate_type, self.entity_id, self._handle)
                self._handle = None

    def _not_free(self) -> PassivatedError:
        return PassivatedError(
            f"{self.aggregate_type.persistence_id(self.entity_id)}: the retiring (or dead) "
            f"activation still holds the name after {_RETRY_DEADLINE_S}s; not applied"
        )

    def _give_up(self, epoch: int, err: BaseException) -> BaseException:
        out = unwrap_error(err)
        if isinstance(out, HostCrashedError):
            # ActorDiedError: Ray will not bring that actor back (hosts have max_restarts=0)
            self._renew(epoch, retired=isinstance(err, ActorDiedError))
        return out

    # ------------------------------------------------------------------ the one implementation

    async def ask_async(
        self, command: Any, timeout: float | None = None, *, idempotency_key: str | None = None
    ) -> Any:
        """Send ``command`` and return the reply once its events are durable, or raise the
        typed raysource error. :meth:`ask` is the blocking form of this same call.
        ``idempotency_key``: the key to send it under (default: a new one; see the module
        docstring; ``ConfigError`` if the type has keys off).

        The command is submitted when the coroutine first runs: await (or schedule) calls
        in send order."""
        return await self._ask(self._keyed(command, idempotency_key), timeout, None)

    def _keyed(self, command: Any, key: str | None) -> Any:
        """``command`` in its :class:`Keyed` envelope (a new key unless given), or as it is
        when the type has keys off."""
        if not self.aggregate_type.idempotency.enabled:
            if key is not None:
                raise ConfigError(
                    f"aggregate type {self.aggregate_type.name!r} has idempotency "
                    f"keys off; cannot send under key {key!r}"
                )
            return command
        if isinstance(command, Keyed):
            return command
        trace = tracing.current_carrier() if tracing.ENABLED else None
        return Keyed(command, uuid.uuid4().hex if key is None else key, trace)

    def _call_deadline(self, timeout: float | None) -> float:
        """Until when keyed calls re-send unknown outcomes: the call's deadline (none when the
        ref has ``default_timeout=None`` and the call no timeout: the key makes every re-send
        safe, so the call waits for the outcome as long as it takes)."""
        t = self.default_timeout if timeout is None else timeout
        return math.inf if t is None else time.monotonic() + t

    async def _ask(self, command: Any, timeout: float | None, first: Sent | None) -> Any:
        key = key_of(command)
        return await self._deadline(
            self._until_answered(
                lambda: self._send(command),
                first=first,
                keyed_until=self._call_deadline(timeout) if key else None,
            ),
            timeout,
            key,
        )

    async def state_async(self, timeout: float | None = None) -> Any:
        """The aggregate's current state (after every durable event), activating it if it is
        not active; read-only (no command, no journal write), so re-sent under the same rules
        as :meth:`ask_async`. Commands this ref sent but whose replies were not awaited may or
        may not be reflected. :meth:`state` is the blocking form."""
        return await self._state(timeout, None)

    async def _state(self, timeout: float | None, first: Sent | None) -> Any:
        return await self._deadline(self._until_answered(self._send_state, first=first), timeout)

    async def ask_many_async(
        self,
        commands: Iterable[Any],
        timeout: float | None = None,
        *,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[Any]:
        """Send ``commands`` as one batch (one Ray call) and return one outcome per command, in
        order: its reply, or its typed error *object* (``CommandRejected``, ``HandlerError``,
        ``SerializationError``, ``PersistFailedError``, ... — never raised per command).
        :meth:`ask_many` is the blocking form.

        Processed in order, after this ref's earlier commands and before its later ones, with
        one journal write for many commands (group commit). Re-sends follow :meth:`ask_async`:
        commands the host reports not applied (``AggregateStoppedError``/``PassivatedError``,
        for the whole batch or per command) are re-sent, in their original relative order, to
        a fresh activation under a fresh caller id. Where the outcome is unknown, every command
        of the batch not yet answered gets a ``HostCrashedError`` (the host died) or an
        ``AskTimeoutError`` (``timeout`` seconds passed) object: it may or may not have run.
        With idempotency keys (one per command; ``idempotency_keys`` gives them, None entries
        get a new one) outcome-unknown failures are re-sent under the same keys until the
        deadline, as for :meth:`ask_async`. Raises only what submitting raises (e.g. an
        unpicklable command) or ``ConfigError`` for bad keys.
        """
        return await self._ask_many(
            self._keyed_batch(list(commands), idempotency_keys), timeout, None
        )

    def _keyed_batch(self, commands: list[Any], keys: Iterable[str | None] | None) -> list[Any]:
        keys = [None] * len(commands) if keys is None else list(keys)
        if len(keys) != len(commands):
            raise ConfigError(f"{len(keys)} idempotency keys for {len(commands)} commands")
        return [self._keyed(c, k) for c, k in zip(commands, keys)]

    async def _ask_many(
        self, commands: list[Any], timeout: float | None, first: Sent | None
    ) -> list[Any]:
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))  # indices without a final outcome yet
        retry_until = time.monotonic() + _RETRY_DEADLINE_S
        keyed_until = (
            self._call_deadline(timeout) if any(isinstance(c, Keyed) for c in commands) else None
        )
        unknown: dict[int, BaseException] = {}  # keyed: the last unknown outcome per command

        async def run() -> None:
            nonlocal first
            while pending:
                batch = [commands[i] for i in pending]
                try:
                    outcomes, epoch = await self._until_answered(
                        lambda: self._send_batch(batch),
                        retry_until,
                        first=first,
                        with_epoch=True,
                        keyed_until=keyed_until,
                    )
                    first = None
                except _GaveUp as gave_up:
                    for i in pending:  # a command left unknown earlier stays unknown
                        error = unknown.get(i, gave_up.error)
                        results[i] = (
                            naming_key(error, key_of(commands[i]))
                            if isinstance(error, OutcomeUnknownError)
                            else error
                        )
                    pending.clear()
                    return
                pending[:] = self._settle(
                    list(pending),
                    outcomes,
                    results,
                    epoch,
                    retry_until,
                    commands,
                    unknown,
                    keyed_until,
                )
                if any(i in unknown for i in pending):
                    await asyncio.sleep(_UNKNOWN_BACKOFF_S[0])

        try:
            await self._deadline(run(), timeout)
        except AskTimeoutError as timed_out:
            for i in pending:
                results[i] = naming_key(timed_out, key_of(commands[i]))
        return results

    def tell(self, command: Any, *, idempotency_key: str | None = None) -> None:
        """Send ``command`` without waiting. Order with this ref's other commands is kept (it
        is submitted before ``tell`` returns). A not-applied failure is re-sent (at the end of
        the order), and with idempotency keys an outcome-unknown one too (same key, until
        ``default_timeout``); other failures are logged."""
        command = self._keyed(command, idempotency_key)
        first = self._first(lambda: self._send(command, _LOOP.get()))
        _LOOP.submit(self._tell_rest(command, first))

    async def _tell_rest(self, command: Any, first: Sent | None) -> None:
        try:
            await self._until_answered(
                lambda: self._send(command),
                first=first,
                keyed_until=self._call_deadline(None) if key_of(command) else None,
            )
        except Exception as err:  # noqa: BLE001 - fire and forget: logged
            log.warning(
                "tell %r to %s failed: %r",
                type(command).__qualname__,
                self.aggregate_type.persistence_id(self.entity_id),
                err,
            )

    @staticmethod
    def _first(submit: Callable[[], Sent]) -> Sent | None:
        """Submit in the caller's thread (so send order is the caller's order, and a blocking
        resolve stays off the references' loop); None if only a retiring activation is
        known yet (the loop then waits for a fresh one)."""
        try:
            return submit()
        except _NotFreeYet:
            return None

    async def _until_answered(
        self,
        submit: Callable[[], Sent],
        retry_until: float | None = None,
        *,
        first: Sent | None = None,
        with_epoch: bool = False,
        keyed_until: float | None = None,
    ) -> Any:
        """The retry rule, written once for every call shape: submit (``submit()`` returns a
        :class:`~raysource.runtime.actors.protocol.Sent`: a coalescer's future, or an
        ObjectRef, and the epoch) and await the answer,
        re-submitting to a fresh activation while the answer is "not applied" (until
        ``retry_until``) and, for commands under idempotency keys (``keyed_until`` set: the
        call's deadline), while the outcome is unknown (see the module docstring). Gives up with the
        unwrapped, typed error (``_GaveUp`` when ``with_epoch``, for batches that fill it in;
        callers name the keys)."""
        if retry_until is None:
            retry_until = time.monotonic() + _RETRY_DEADLINE_S
        unknown: BaseException | None = None  # keyed: the last outcome-unknown failure
        pause = _UNKNOWN_BACKOFF_S[0]
        while True:
            if first is not None:
                (ref, epoch), first = first, None
            else:
                try:
                    ref, epoch = await self._submit_in_turn(submit)
                except _NotFreeYet:
                    # after an unknown outcome the command may be stored: never answer "not
                    # applied" for it; wait for a fresh activation until the call's deadline
                    # (unknown is only kept for keyed calls, which have keyed_until)
                    deadline = (
                        retry_until if unknown is None or keyed_until is None else keyed_until
                    )
                    if time.monotonic() > deadline:
                        return self._raise(
                            self._not_free() if unknown is None else unknown, with_epoch
                        )
                    await asyncio.sleep(_WAIT_FOR_NAME_S)
                    continue
            try:
                answer = await ref
            except Exception as err:  # Ray's errors (typed by unwrap_error) or the host's
                if _retryable(err) and time.monotonic() <= retry_until:  # not applied
                    self._renew(epoch, retired=_refused(err))
                    continue
                out = self._give_up(epoch, err)
                if keyed_until is not None and unsettled(out, unknown is not None):
                    unknown = out if isinstance(out, OutcomeUnknownError) else unknown
                    if time.monotonic() + pause <= keyed_until:
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, _UNKNOWN_BACKOFF_S[1])
                        continue
                    out = unknown if unknown is not None else out
                return self._raise(out, with_epoch)
            return Sent(answer, epoch) if with_epoch else answer

    async def _submit_in_turn(self, submit: Callable[[], T]) -> T:
        """``submit()``, resolving the host first in a thread when none is known (a blocking
        round trip to the coordinator and region: e.g. a re-send after the host passivated or
        crashed must not stall the caller's event loop, a Serve replica's). Submissions that
        find such a resolve in progress queue behind it in arrival order (an ``asyncio.Lock``
        wakes its waiters first come, first served), so re-sends and new calls keep the order
        in which they asked; with a host known and nobody queued, it submits at once (no
        suspension: a call is still submitted when its coroutine first runs). A ref used from
        a second event loop while the first has a resolve queued resolves as before."""
        loop = asyncio.get_running_loop()
        turn = self._turn
        if turn is None or turn[0] is not loop:
            if turn is not None and turn[2]:  # queued on another loop: the old way
                return submit()
            turn = self._turn = [loop, asyncio.Lock(), 0]
        if self._handle is not None and turn[2] == 0:
            return submit()
        turn[2] += 1
        try:
            async with turn[1]:
                if self._handle is None:
                    await loop.run_in_executor(None, self._resolve_now)
                return submit()
        finally:
            turn[2] -= 1

    def _resolve_now(self) -> None:
        """Resolve (blocking) WITHOUT holding ``_lock`` (the loop takes it to renew or send),
        then install the handle unless another thread did meanwhile."""
        with self._lock:
            if self._handle is not None:
                return
        handle = self.resolver.resolve(self.aggregate_type, self.entity_id)
        with self._lock:
            if self._handle is None:
                try:
                    self._install(handle)
                except _NotFreeYet:
                    pass  # the submission raises it again: the caller waits for a fresh host

    @staticmethod
    def _raise(error: BaseException, wrapped: bool) -> Any:
        if wrapped:
            raise _GaveUp(error)
        raise error

    async def _deadline(
        self, call: Coroutine[Any, Any, T], timeout: float | None, key: str | None = None
    ) -> T:
        """``call`` within ``timeout``; an outcome-unknown error it raises names ``key``."""
        if timeout is None:
            timeout = self.default_timeout
        try:
            if timeout is None:
                return await call
            async with asyncio.timeout(timeout):  # no task per call (wait_for makes one)
                return await call
        except TimeoutError:
            raise naming_key(
                AskTimeoutError(
                    f"no reply from {self.aggregate_type.persistence_id(self.entity_id)} within "
                    f"{timeout}s; the command may or may not run"
                ),
                key,
            ) from None
        except OutcomeUnknownError as err:
            if key is None:
                raise
            raise naming_key(err, key) from err.__cause__

    # ------------------------------------------------------------------ blocking forms

    def ask(
        self, command: Any, timeout: float | None = None, *, idempotency_key: str | None = None
    ) -> Any:
        """Blocking form of :meth:`ask_async`: the reply, or the typed raysource error."""
        command = self._keyed(command, idempotency_key)
        first = self._first(lambda: self._send(command, _LOOP.get()))
        return _LOOP.run(self._ask(command, timeout, first))

    def state(self, timeout: float | None = None) -> Any:
        """Blocking form of :meth:`state_async`."""
        return _LOOP.run(self._state(timeout, self._first(self._send_state)))

    def ask_many(
        self,
        commands: Iterable[Any],
        timeout: float | None = None,
        *,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[Any]:
        """Blocking form of :meth:`ask_many_async`: one reply or typed error object per
        command, in order."""
        commands = self._keyed_batch(list(commands), idempotency_keys)
        first = self._first(lambda: self._send_batch(commands, _LOOP.get()))
        return _LOOP.run(self._ask_many(commands, timeout, first))

    def submit(self, command: Any) -> Any:
        """Send ``command`` now and return the raw ObjectRef (no retry, no unwrapping, no
        coalescing): the building block for pipelining from synchronous code."""

        def send(handle: Any) -> Any:
            ref = self._remote(
                handle.ask_ordered, self.entity_id, self._caller_id, self._seq, command
            )
            self._seq += 1
            return ref

        return self._with_current(send)

    # ------------------------------------------------------------------ sending

    def _send(self, command: Any, loop: asyncio.AbstractEventLoop | None = None) -> Sent:
        """Hand ``command`` with the next sequence number to its host's coalescer on ``loop``
        (default: the running one; see ``raysource.runtime.actors.coalesce``); returns (a
        future of its reply, epoch). Raises ``_NotFreeYet`` while only a retiring activation
        can be resolved, ``UnserializableError`` (numbering unchanged) for a command Ray could
        not pickle."""
        self._picklable(command)
        with self._lock:
            handle = self._current()
            fut = coalesce.submit(
                handle,
                _actor_id(handle),
                loop or asyncio.get_running_loop(),
                Call(self.entity_id, self._caller_id, self._seq, [command]),
                single=True,
            )
            self._seq += 1
            return Sent(fut, self._epoch)

    def _picklable(self, command: Any) -> None:
        try:
            protocol.check_picklable(command)
        except TypeError as exc:
            pid = self.aggregate_type.persistence_id(self.entity_id)
            raise UnserializableError(
                f"the command cannot be sent to its host (Ray could not pickle it): {exc}",
                persistence_id=pid,
            ) from exc

    def _remote(self, method: Any, *args: Any) -> Any:
        """``method.remote(*args)``; a command Ray cannot pickle is an ``UnserializableError``
        (not applied: nothing was sent, the numbering does not advance)."""
        try:
            return method.remote(*args)
        except TypeError as exc:
            pid = self.aggregate_type.persistence_id(self.entity_id)
            raise UnserializableError(
                f"the command cannot be sent to its host (Ray could not pickle it): {exc}",
                persistence_id=pid,
            ) from exc

    def _send_state(self) -> Sent:
        with self._lock:
            return Sent(self._remote(self._current().state, self.entity_id), self._epoch)

    def _send_batch(
        self, commands: list[Any], loop: asyncio.AbstractEventLoop | None = None
    ) -> Sent:
        """Hand ``commands`` numbered from the next sequence number on (the numbering advances
        by ``len(commands)``) to the coalescer like :meth:`_send`; returns (a future of the
        outcome list, epoch). Raises like :meth:`_send`."""
        for command in commands:
            self._picklable(command)
        with self._lock:
            handle = self._current()
            fut = coalesce.submit(
                handle,
                _actor_id(handle),
                loop or asyncio.get_running_loop(),
                Call(self.entity_id, self._caller_id, self._seq, list(commands)),
                single=False,
            )
            self._seq += len(commands)
            return Sent(fut, self._epoch)

    def _settle(
        self,
        pending: list[int],
        outcomes: list[Any],
        results: list[Any],
        epoch: int,
        retry_until: float,
        commands: list[Any],
        unknown: dict[int, BaseException],
        keyed_until: float | None,
    ) -> list[int]:
        """Record the final outcomes of one batch call; returns the indices to re-send (not
        applied; keyed: also outcome unknown, see :meth:`_until_answered`), renewing the
        caller id if there are any."""
        if len(outcomes) != len(pending):
            raise RuntimeError(
                f"ask_many answered {len(outcomes)} outcomes for {len(pending)} commands"
            )
        again: list[int] = []
        retired = False
        now = time.monotonic()
        for i, outcome in zip(pending, outcomes):
            key = key_of(commands[i])
            if not isinstance(outcome, BaseException):
                results[i] = outcome
            elif keyed_until is not None and key is not None and unsettled(outcome, i in unknown):
                if isinstance(outcome, OutcomeUnknownError):
                    unknown[i] = outcome
                if now <= keyed_until:
                    again.append(i)
                else:
                    results[i] = naming_key(unknown.get(i, outcome), key)
            elif isinstance(outcome, AggregateStoppedError) and now <= retry_until:
                again.append(i)
                retired = retired or isinstance(outcome, PassivatedError)
            else:
                results[i] = outcome
        if again:
            self._renew(epoch, retired=retired)
        return again

    def __repr__(self) -> str:
        return f"EntityRef({self.aggregate_type.persistence_id(self.entity_id)!r})"


if tracing.ENABLED:  # a span per call at the reference (see raysource.runtime.tracing)
    tracing.instrument_refs(EntityRef)
