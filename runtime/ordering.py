"""Per-caller FIFO for hosts whose calls may arrive out of order.

Ray's async actors do not keep submission order, even from one caller with
``max_concurrency=1`` (see DESIGN.md). A caller therefore numbers its commands per aggregate
(``0, 1, 2, ...``) and :class:`CallerOrder` admits each caller's commands to the mailbox in that
order, holding back early arrivals until their predecessors came in.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raysource.runtime.errors import CommandError

__all__ = ["CallerOrder"]


@dataclass(slots=True)
class _Caller:
    next_seq: int = 0
    # seq -> (command, future the submitter awaits); held back until next_seq reaches seq
    held: dict[int, tuple[Any, asyncio.Future[Any]]] = field(default_factory=dict)


class CallerOrder:
    """Reorder buffer in front of ``submit(command) -> Future``.

    ``submit`` must enqueue synchronously (so admission order is mailbox order) and return a
    future of the reply. ``gap_timeout_s``: how long a held-back command waits for a missing
    predecessor before the gap is skipped (the predecessor was lost or cancelled by its caller).
    At most ``max_callers`` idle callers are remembered (least recently used are forgotten;
    a forgotten caller must not reuse its id).
    """

    def __init__(
        self,
        submit: Callable[[Any], asyncio.Future[Any]],
        *,
        gap_timeout_s: float = 10.0,
        max_callers: int = 10_000,
    ) -> None:
        self._submit = submit
        self._gap_timeout_s = gap_timeout_s
        self._max_callers = max_callers
        self._callers: OrderedDict[str, _Caller] = OrderedDict()

    def __len__(self) -> int:
        return len(self._callers)

    @property
    def holding(self) -> bool:
        """True if some command is held back waiting for a predecessor."""
        return any(c.held for c in self._callers.values())

    async def submit(self, caller_id: str, seq: int, command: Any) -> Any:
        """Admit ``command`` as number ``seq`` of ``caller_id`` (in order) and await its reply."""
        caller = self._callers.get(caller_id)
        if caller is None:
            caller = self._callers[caller_id] = _Caller()
            self._forget_idle()
        self._callers.move_to_end(caller_id)
        if seq < caller.next_seq or seq in caller.held:
            raise CommandError(
                f"caller {caller_id!r}: sequence number {seq} was already used "
                f"(next expected {caller.next_seq})"
            )
        waiter = asyncio.get_running_loop().create_future()
        caller.held[seq] = (command, waiter)
        self._admit(caller)
        try:
            if not waiter.done():
                done, _ = await asyncio.wait({waiter}, timeout=self._gap_timeout_s)
                if not done and seq in caller.held:
                    # The predecessors did not come: skip the gap up to the oldest held one.
                    caller.next_seq = min(caller.held)
                    self._admit(caller)
            reply_future = await waiter
        except asyncio.CancelledError:
            waiter.cancel()  # still held back: never admit it
            raise
        return await reply_future

    def _admit(self, caller: _Caller) -> None:
        while caller.next_seq in caller.held:
            command, waiter = caller.held.pop(caller.next_seq)
            caller.next_seq += 1
            if waiter.done():  # the submitter was cancelled while held back
                continue
            try:
                waiter.set_result(self._submit(command))
            except Exception as exc:  # e.g. the core stopped: report to that submitter
                waiter.set_exception(exc)

    def fail_all(self, error: BaseException) -> None:
        """Fail every held-back command with ``error`` (the host is stopping)."""
        for caller in self._callers.values():
            for _, waiter in caller.held.values():
                if not waiter.done():
                    waiter.set_exception(error)
            caller.held.clear()

    def _forget_idle(self) -> None:
        while len(self._callers) > self._max_callers:
            for cid, c in self._callers.items():
                if not c.held:
                    del self._callers[cid]
                    break
            else:
                return
