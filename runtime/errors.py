"""Errors of the command path: what a caller of an aggregate can be answered besides a reply.

Raised by the entity core and host (:mod:`raysource.runtime.core`, :mod:`raysource.runtime.host`)
and the references (:mod:`raysource.runtime.actors.refs`). Each is in one of the two categories
callers act on: :class:`~raysource.journal.errors.NotAppliedError` (safe to re-send) or
:class:`~raysource.journal.errors.OutcomeUnknownError`; a rejection is the aggregate's answer.
The whole tree: :mod:`raysource.errors`.
"""

from __future__ import annotations

from typing import Any

from raysource.journal.errors import NotAppliedError, OutcomeUnknownError, RaysourceError

__all__ = [
    "CommandError",
    "CommandRejected",
    "UnknownCommandError",
    "HandlerError",
    "PersistFailedError",
    "WriteOutcomeUnknownError",
    "AggregateStoppedError",
    "RecoveryFailedError",
    "PassivatedError",
    "HostCrashedError",
    "AskTimeoutError",
    "OverloadedError",
    "TimerNotDueError",
]


class CommandError(RaysourceError):
    """A command sent to an aggregate did not succeed."""


class CommandRejected(CommandError):
    """The aggregate validated the command against its state and refused it.

    ``reason`` is the domain reason given by the command handler. Nothing was persisted.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class UnknownCommandError(CommandError, NotAppliedError, TypeError):
    """The aggregate type does not handle this command type."""


class HandlerError(CommandError, NotAppliedError):
    """The user's command handler raised; the aggregate is alive and its state unchanged."""


class PersistFailedError(CommandError, NotAppliedError):
    """The events of this command were not stored, and never will be: the journal said the
    write provably did not happen (it never reached the store, or was refused before it was
    executed). The command had no visible effect; re-sending it is safe."""


class WriteOutcomeUnknownError(CommandError, OutcomeUnknownError):
    """The journal did not confirm this command's events (a timeout, a lost response, a
    frozen or restarting store) and a re-read did not find them, or could not be made: they
    may be stored, or may still land. The activation stopped, so the next command recovers the
    truth from the journal (whichever it holds: the command applied once, or not at all).
    Check the state before re-sending a non-idempotent command."""


class RecoveryFailedError(CommandError, NotAppliedError):
    """The aggregate could not be activated: its recovery failed (the store was unavailable,
    or a stored event could not be read; the cause is chained). The command was not applied.
    References do not re-send it on their own (the store may stay down); re-send once the store
    is back, and the next command tries a fresh recovery."""


class AggregateStoppedError(CommandError, NotAppliedError):
    """The activation stopped (fenced by a concurrent writer, or shut down) before replying.

    The command was not applied by this activation; retrying reaches a fresh activation.
    """


class PassivatedError(AggregateStoppedError):
    """The host passivated (idle, evicted, handed off) this aggregate before the command
    reached it. The command was not applied; a retry reaches a fresh activation (references
    re-resolve and re-send transparently)."""


class OverloadedError(CommandError, NotAppliedError):
    """The aggregate's mailbox (``max_mailbox`` commands in flight) or its host
    (``max_in_flight`` over all its aggregates) is full: the command was refused before it
    reached the aggregate, so it was not applied. Safe to retry later (back off first); it is
    not re-sent automatically."""


class TimerNotDueError(CommandError, NotAppliedError):
    """A durable timer's fire reached its aggregate before the timer's due time (a timer
    service's clock ahead of the aggregate's, or a fire sent by hand): nothing ran and the
    timer stays pending; a timer service fires it again later."""


class HostCrashedError(CommandError, OutcomeUnknownError):
    """The actor hosting the aggregate died (crash, ``ray.kill``, lost node) while the command
    was in flight. The outcome is unknown: the command may or may not have been applied, so it
    is not re-sent automatically. The next command reaches a fresh activation that recovers
    every acknowledged event."""


class AskTimeoutError(CommandError, OutcomeUnknownError, TimeoutError):
    """No reply arrived within the caller's timeout. The command may or may not have run."""
