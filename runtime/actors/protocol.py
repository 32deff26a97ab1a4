"""The host-actor protocol, in one place: what a reference sends to a host actor and how the
answer comes back.

The caller side (``raysource.runtime.actors.refs`` numbers the commands and retries,
``raysource.runtime.actors.coalesce`` batches concurrent calls) and the host actor
(``raysource.runtime.actors.host_actor``) both speak it through these types and functions:

* :class:`Call`: one caller's numbered commands for one entity, ``(entity_id, caller_id,
  first_seq, commands)``: exactly the arguments of the host actor's ``ask_many``; the
  commands are numbered ``first_seq, first_seq + 1, ...`` of ``caller_id`` (per-caller order,
  see ``raysource.runtime.ordering``). A command may be a
  :class:`~raysource.runtime.idempotency.Keyed` envelope (its own compact pickle).
* :func:`send`: the Ray call for one or more calls: ``ask_ordered(entity_id, caller_id, seq,
  command)`` for one call of one command, ``ask_many(*call)`` for one batch,
  ``ask_batches([call, ...])`` for several (each run as its ``ask_many``; one result per call:
  its outcome list, or as an object the error its ``ask_many`` raised).
* :func:`answer` / :func:`fail`: settle a caller's future from that result (one command: its
  reply, or its error raised; a batch: the outcome list of replies and error objects).
* :class:`Sent`: what a reference holds for a submitted call: the awaitable of its answer and
  the reference's epoch (which activation it was sent to).

On the wire a :class:`Call` pickles as a named tuple (its class once per Ray call, then four
plain fields); the single-command path sends the four values as the method's arguments.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, NamedTuple

from ray import cloudpickle

__all__ = ["Call", "Sent", "answer", "check_picklable", "fail", "send"]


class Call(NamedTuple):
    """One caller's numbered commands for one entity (the arguments of ``ask_many``)."""

    entity_id: str | None
    caller_id: str
    first_seq: int
    commands: list[Any]


class Sent(NamedTuple):
    """A submitted call: ``answer`` (a future, or an ObjectRef) and the sending ref's epoch."""

    answer: Any
    epoch: int


def check_picklable(command: Any) -> None:
    """Raise ``TypeError`` (what Ray raises at ``.remote()``) if ``command`` cannot be pickled,
    before the reference numbers it: the standard pickler first (~3 us for a small dataclass),
    Ray's cloudpickle only for what it refuses (e.g. local classes)."""
    try:
        pickle.dumps(command, protocol=5)
    except Exception:  # noqa: BLE001 - the standard pickler's refusal is not the verdict
        try:
            cloudpickle.dumps(command, protocol=5)
        except Exception as exc:
            raise TypeError(f"cannot pickle the command: {exc}") from exc


def send(handle: Any, calls: list[Call], single: bool) -> Any:
    """The Ray call (an ObjectRef) for ``calls`` to the host actor ``handle``; ``single``: the
    one call carries one command (``ask``/``tell``), answered by its reply. Raises Ray's
    ``TypeError`` if an argument cannot be pickled."""
    if len(calls) == 1:
        call = calls[0]
        if single:
            return handle.ask_ordered.remote(
                call.entity_id, call.caller_id, call.first_seq, call.commands[0]
            )
        return handle.ask_many.remote(*call)
    return handle.ask_batches.remote(calls)


def answer(future: asyncio.Future[Any], single: bool, result: Any, *, whole: bool) -> None:
    """Settle ``future`` with ``result``: the call's own answer (``whole``: what its method
    returned: the reply, or the outcome list) or its outcome list within ``ask_batches``
    (a single command's outcome is then its reply, or its error raised)."""
    if future.done():  # the caller gave up waiting (deadline): the outcome is dropped
        return
    if single and not whole:
        result = result[0]
        if isinstance(result, BaseException):
            future.set_exception(result)
            return
    future.set_result(result)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Settle ``future`` with ``error`` (the whole Ray call, or the call's ``ask_many``,
    failed), unless the caller gave up already."""
    if not future.done():
        future.set_exception(error)
