"""How the Cassandra stores talk to the driver about failure: the retry policy every statement
runs under, and the raysource error a driver exception becomes.

Retries: every statement runs under :class:`NoResendRetryPolicy`. The driver's default policy
re-sends a statement to the next host after a connection error or a server error, whether or not
the first attempt was applied; for a conditional append that turns a lost response into a second
execution (which comes back "not applied" with the writer's own rows). Here a statement is
re-sent only if it is marked idempotent (``is_idempotent``: the journal marks its reads and its
idempotent writes); any other failure after sending is handed to the caller as an unknown outcome.

Driver errors are wrapped by whether the request could have reached a coordinator
(:func:`wrap_driver_error`):

* not sent (``NoHostAvailable`` with no request sent), or any failure of a *read* (a
  ``SELECT`` writes nothing, whether it timed out or was refused): ``JournalUnavailableError``
  — nothing written;
* a write sent and unconfirmed (client timeout, ``WriteTimeout``, ``Unavailable`` (a Paxos
  commit may fail on it after the proposal was accepted), replica failures, the connection
  dropped or the server shut down after the request went out, a server error,
  ``CAS_WRITE_UNKNOWN`` of protocol v5, any unknown error): ``JournalOutcomeUnknownError`` —
  it may or may not have been applied, and may still land;
* ``Overloaded`` or ``IsBootstrapping`` answering a *write* (anything but a ``SELECT``): also
  ``JournalOutcomeUnknownError``, decided by the journal's re-read. Cassandra 5.0 does not
  answer Overloaded only before executing: ``StorageProxy.sendToHintedReplicas`` (plain and
  batch writes) and ``StorageProxy.commitPaxos`` (the commit of a conditional write, after its
  proposal was accepted) call ``checkHintOverload(replica)`` inside the loop that sends the
  mutation to each replica, so the exception can follow a send to (or a local apply on) an
  earlier replica. ``IsBootstrappingException`` is thrown by ``StorageProxy.read`` (its
  ``isSafeToPerformRead`` check); a conditional write reaches it after ``beginAndRepairPaxos``
  has already completed in-flight proposals, and we do not rely on that staying the only path;
* invalid request (bad CQL, unauthorized, ...): ``JournalError`` — nothing written.

One connect failure is retried by the session, not handed on: the driver's protocol v5
framing glitch (:func:`framing_glitch`).
"""

from __future__ import annotations

from typing import Any

from cassandra import (
    ConsistencyLevel,
    OperationTimedOut,
    RequestExecutionException,
    RequestValidationException,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.policies import RetryPolicy
from cassandra.protocol import ErrorMessage
from cassandra.protocol import RequestValidationException as ValidationErrorMessage
from cassandra.query import BatchStatement

from raysource.journal.errors import (
    JournalError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
)

__all__ = ["NoResendRetryPolicy", "consistency", "framing_glitch", "wrap_driver_error", "writes"]

# Invalid requests (bad CQL, unauthorized, ...): refused before execution.
_INVALID = (RequestValidationException, ValidationErrorMessage)


def consistency(name: str) -> int:
    level: int = getattr(ConsistencyLevel, name)
    return level


# A retry decision as the driver reads it: (RETRY | RETHROW | IGNORE | RETRY_NEXT_HOST,
# consistency level to retry at, or None).
_Decision = tuple[int, int | None]


class NoResendRetryPolicy(RetryPolicy):  # type: ignore[misc]  # the driver is untyped (Any)
    """The driver's default retry policy, except that a statement not marked idempotent is
    never re-sent after it may have reached a coordinator (a read or write timeout, an
    unavailable error, a server, overloaded or connection error): the error goes to the
    caller, who decides with a re-read. Without this, a lost response to a conditional batch
    made the driver send it again, and the second execution came back "not applied" with the
    writer's own rows."""

    def on_read_timeout(
        self,
        query: Any,
        consistency: int,
        required_responses: int,
        received_responses: int,
        data_retrieved: bool,
        retry_num: int,
    ) -> _Decision:
        # A conditional write's Paxos read can time out after its prepare round repaired
        # (completed) proposals in flight: not re-sent either.
        if not getattr(query, "is_idempotent", False):
            return self.RETHROW, None
        decision: _Decision = super().on_read_timeout(
            query, consistency, required_responses, received_responses, data_retrieved, retry_num
        )
        return decision

    def on_write_timeout(
        self,
        query: Any,
        consistency: int,
        write_type: int,
        required_responses: int,
        received_responses: int,
        retry_num: int,
    ) -> _Decision:
        if not getattr(query, "is_idempotent", False):
            return self.RETHROW, None
        decision: _Decision = super().on_write_timeout(
            query, consistency, write_type, required_responses, received_responses, retry_num
        )
        return decision

    def on_unavailable(
        self,
        query: Any,
        consistency: int,
        required_replicas: int,
        alive_replicas: int,
        retry_num: int,
    ) -> _Decision:
        if not getattr(query, "is_idempotent", False):
            return self.RETHROW, None
        decision: _Decision = super().on_unavailable(
            query, consistency, required_replicas, alive_replicas, retry_num
        )
        return decision

    def on_request_error(
        self, query: Any, consistency: int, error: Exception, retry_num: int
    ) -> _Decision:
        if not getattr(query, "is_idempotent", False):
            return self.RETHROW, None
        decision: _Decision = super().on_request_error(query, consistency, error, retry_num)
        return decision


def _never_sent(exc: NoHostAvailable) -> bool:
    """``NoHostAvailable`` means no host took the request, unless one of its per-host errors
    is what a sent request ends with (after a retry of an idempotent statement). The driver
    keeps a node's Unavailable/ReadTimeout/WriteTimeout answer there as the exception
    (``RequestExecutionException``), others as the ``ErrorMessage`` (Overloaded included)."""
    errors = getattr(exc, "errors", None) or {}
    return not any(
        isinstance(e, (OperationTimedOut, ErrorMessage, RequestExecutionException))
        for e in errors.values()
    )


def writes(stmt: Any) -> bool:
    """Whether ``stmt`` may write: anything but a ``SELECT`` (a batch always may)."""
    if isinstance(stmt, BatchStatement):
        return True
    text = stmt if isinstance(stmt, str) else getattr(stmt, "query_string", None)
    if text is None and hasattr(stmt, "prepared_statement"):
        text = stmt.prepared_statement.query_string
    return not (text or "").lstrip().upper().startswith("SELECT")


def wrap_driver_error(
    exc: BaseException, what: str, *, sent: bool = True, may_write: bool = True
) -> JournalError:
    """The raysource error for a driver exception (the caller raises it ``from exc``), by
    whether the request may have been executed (see the module docstring). ``sent=False``:
    nothing can have been written (raised before the request went out, or by a request that
    writes nothing: connect, prepare). ``may_write=False``: the request was a read (a
    ``SELECT``), which writes nothing whatever its fate: ``JournalUnavailableError``."""
    if isinstance(exc, JournalError):
        return exc
    name = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _INVALID):
        return JournalError(f"{what}: {name}")
    if not may_write:  # a read: whatever happened to it, it wrote nothing
        return JournalUnavailableError(f"{what}: Cassandra unavailable, the read failed ({name})")
    if not sent or (isinstance(exc, NoHostAvailable) and _never_sent(exc)):
        return JournalUnavailableError(
            f"{what}: Cassandra unavailable, nothing was sent or executed ({name})"
        )
    return JournalOutcomeUnknownError(
        f"{what}: Cassandra did not confirm ({name}); the request may or may not have been "
        "executed (a write may still land)"
    )


def framing_glitch(exc: BaseException) -> bool:
    """A connect refused only because cassandra-driver's protocol v5 framing read a segment
    header wrong: ``NoHostAvailable`` whose every error is a ``ConnectionShutdown('CRC mismatch
    on header ...')`` (a driver defect, PYTHON-1337; seen here in one of the suite's runs, by a
    host actor opening its stores on a loaded box). Nothing was sent on such a connection
    (the control connection fails at start-up), so connecting again is safe."""
    errors = getattr(exc, "errors", None)
    return (
        isinstance(exc, NoHostAvailable)
        and isinstance(errors, dict)
        and bool(errors)
        and all(
            isinstance(e, ConnectionShutdown) and "CRC mismatch" in str(e) for e in errors.values()
        )
    )
