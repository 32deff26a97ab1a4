"""Coalescing: concurrent reference calls from one process to one host actor share Ray calls.

A reference (:class:`~raysource.runtime.actors.refs.EntityRef`) hands every command it sends to
the :class:`Coalescer` of its host actor (one per host actor and event loop in a process)
as a *group*: a :class:`~raysource.runtime.actors.protocol.Call` (the arguments of the host's
``ask_many``: one command for ``ask``/``tell``, the whole batch for ``ask_many``). The
coalescer sends what it holds as one Ray call (the protocol's
:func:`~raysource.runtime.actors.protocol.send`):

* one group: the host's own method for it, ``ask_ordered`` (one command) or ``ask_many`` (a
  batch), exactly as an uncoalesced reference would (a sequential caller pays nothing);
* several groups: ``ask_batches(groups)``, which runs each group as that ``ask_many`` and
  answers one result per group: its outcome list, or as an object the error the group's
  ``ask_many`` raised. A reply or error of one command never affects its batch-mates.

When it sends: groups added while the loop runs one step go out together once the step is over
(``loop.call_soon``; or after ``RAYSOURCE_COALESCE_WINDOW_MS``), as one call if fewer than
``RAYSOURCE_COALESCE_CALLS`` (default 1) calls to that host are in flight; otherwise they wait
for a call to return, and go with everything added meanwhile, but never longer than
``RAYSOURCE_COALESCE_HOLD_MS`` (default 10 ms): then a further call goes out anyway, so a slow
or stuck command (a recovery, a frozen store) delays the other callers of its host by at most
that much. A call carries at most ``_MAX_COMMANDS`` commands (a group is never split).

What callers see (the promises of the references are the host's and do not change):
order per caller is the host's ordering buffer's (each group carries its caller's numbers, so
calls may go out and arrive in any order); a future resolves to the group's result: the reply
(or raises the command's error: the host's error object, or Ray's error for the whole call,
which the reference types as before) for one command, the outcome list for a batch. A
cancelled future (a caller's deadline passed) does not withdraw its group: its number is taken,
so it is sent anyway and its outcome dropped, like an uncoalesced call whose wait timed out.
``RAYSOURCE_COALESCE=0`` sends every group on its own, at once (one Ray call per command).

Everything runs on the future's event loop (no locks): :func:`submit` called from another
thread (the blocking reference forms) hands the group over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections import deque
from typing import Any

from raysource.journal.errors import UnserializableError
from raysource.runtime.actors import protocol
from raysource.runtime.actors.protocol import Call

__all__ = ["STATS", "Coalescer", "coalescers", "submit"]

ENABLED = os.environ.get("RAYSOURCE_COALESCE", "1") != "0"
_MAX_CALLS = max(1, int(os.environ.get("RAYSOURCE_COALESCE_CALLS", "1")))
_HOLD_S = float(os.environ.get("RAYSOURCE_COALESCE_HOLD_MS", "10")) / 1000
_WINDOW_S = float(os.environ.get("RAYSOURCE_COALESCE_WINDOW_MS", "0")) / 1000
_MAX_COMMANDS = 512  # per call: keeps a call's argument below Ray's inline limit (~100 KB)
STATS = {"calls": 0, "groups": 0, "commands": 0}
"""Ray calls, groups and commands the coalescers of this process sent (diagnostics, tests;
updated from every loop's thread without a lock, so approximate under threads)."""


class _Group:
    """One :class:`Call` waiting in a coalescer: ``single`` (one command, answered by its
    reply), the caller's ``future`` and when it was added (loop time)."""

    __slots__ = ("call", "single", "future", "since")

    def __init__(self, call: Call, single: bool, future: asyncio.Future, since: float) -> None:
        self.call, self.single, self.future, self.since = call, single, future, since


class Coalescer:
    """The groups waiting for, and the calls in flight to, one host actor from one event loop
    (see the module docstring). Created and dropped by :func:`submit`."""

    def __init__(
        self, handle: Any, loop: asyncio.AbstractEventLoop, key: str, registry: dict[str, Coalescer]
    ) -> None:
        self.handle, self.loop, self.key, self.registry = handle, loop, key, registry
        self.pending: deque[_Group] = deque()
        self.in_flight = 0
        self.calls = 0  # Ray calls sent (diagnostics, tests)
        self.groups = 0  # groups sent
        self._timer: asyncio.Handle | None = None

    def add(self, group: _Group) -> None:
        self.pending.append(group)
        if not ENABLED:
            self._flush()
        elif self._timer is None:
            self._timer = (
                self.loop.call_later(_WINDOW_S, self._flush)
                if _WINDOW_S
                else self.loop.call_soon(self._flush)
            )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.loop.time()
        while self.pending and (
            not ENABLED or self.in_flight < _MAX_CALLS or now - self.pending[0].since >= _HOLD_S
        ):
            groups = [self.pending.popleft()]
            n = len(groups[0].call.commands)
            while (
                ENABLED and self.pending and n + len(self.pending[0].call.commands) <= _MAX_COMMANDS
            ):
                group = self.pending.popleft()
                groups.append(group)
                n += len(group.call.commands)
            self._send(groups)
        if self.pending:
            self._timer = self.loop.call_at(self.pending[0].since + _HOLD_S, self._flush)
        elif not self.in_flight and self.registry.get(self.key) is self:
            del self.registry[self.key]

    def _send(self, groups: list[_Group]) -> None:
        try:
            calls = [groups[0].call] if len(groups) == 1 else [g.call for g in groups]
            ref = protocol.send(self.handle, calls, groups[0].single)
        except TypeError:
            # Checked per command before numbering (check_picklable), so this is a value only
            # Ray's serializer refuses: send each group alone; only the culprit's call fails.
            if len(groups) == 1:
                protocol.fail(groups[0].future, self._pickling_error(groups[0]))
                return
            for group in groups:
                self._send([group])
            return
        self.in_flight += 1
        self.calls += 1
        self.groups += len(groups)
        STATS["calls"] += 1
        STATS["groups"] += len(groups)
        STATS["commands"] += sum(len(g.call.commands) for g in groups)
        self.loop.create_task(self._receive(ref, groups))

    @staticmethod
    def _pickling_error(group: _Group) -> Exception:
        return UnserializableError(
            f"the command cannot be sent to its host (Ray could not pickle it; entity "
            f"{group.call.entity_id!r}); not applied"
        )

    async def _receive(self, ref: Any, groups: list[_Group]) -> None:
        try:
            try:
                result = await ref
            except Exception as err:  # a failure of the whole call: every group hears it
                for g in groups:
                    protocol.fail(g.future, err)
                return
            if len(groups) == 1:
                protocol.answer(groups[0].future, groups[0].single, result, whole=True)
            else:
                for g, r in zip(groups, result):
                    if isinstance(r, BaseException):
                        protocol.fail(g.future, r)
                    else:
                        protocol.answer(g.future, g.single, r, whole=False)
        finally:
            self.in_flight -= 1
            self._flush()


_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Coalescer]] = (
    weakref.WeakKeyDictionary()
)


def _add(handle: Any, key: str, group: _Group) -> None:
    loop = group.future.get_loop()
    registry = _REGISTRY.get(loop)
    if registry is None:
        registry = _REGISTRY[loop] = {}
    coalescer = registry.get(key)
    if coalescer is None:
        coalescer = registry[key] = Coalescer(handle, loop, key, registry)
    coalescer.add(group)


def submit(
    handle: Any, key: str, loop: asyncio.AbstractEventLoop, call: Call, *, single: bool
) -> asyncio.Future:
    """Hand ``call`` to the coalescer of ``handle`` (``key``: its actor id) on ``loop``;
    returns the future of its result (see the module docstring), awaitable on ``loop``.
    Callable from any thread."""
    future = loop.create_future()
    group = _Group(call, single, future, loop.time())
    if asyncio._get_running_loop() is loop:
        _add(handle, key, group)
    else:
        loop.call_soon_threadsafe(_add, handle, key, group)
    return future


def coalescers(loop: asyncio.AbstractEventLoop | None = None) -> list[Coalescer]:
    """The live coalescers of ``loop`` (default: the running loop); diagnostics and tests."""
    registry = _REGISTRY.get(loop or asyncio.get_running_loop())
    return list(registry.values()) if registry else []
