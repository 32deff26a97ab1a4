"""How a raysource error becomes an HTTP answer: one table, read top to bottom, first match.

    status  error (and its subclasses)        meaning for the client
    409     CommandRejected                   the aggregate said no (domain reason): nothing written
    404     NotFoundError, UnknownAggregate-  the named resource does not exist
            TypeError, UnknownEntityError
    413     PayloadTooLargeError              the command's events exceed the store's size limit
    422     UnserializableError               the command cannot be encoded (bad field values)
    400     ConfigError                       bad input: an invalid entity id, name or setting
    429     OverloadedError                   a full host mailbox, or the replica's in-flight limit
                                              (ReplicaOverloadedError): retry after Retry-After
    504     OutcomeUnknownError (category)    may or may not have been applied: the answer carries
                                              the Idempotency-Key to re-send it with
    503     NoLiveNodesError, JournalUnavail- not applied (store or cluster unavailable, activation
            ableError, NotAppliedError        stopping): safe to re-send after Retry-After
    500     HandlerError, UnknownCommandError a bug in the service or its aggregate (not applied)
    500     RaysourceError                    anything else

Request bodies and parameters FastAPI refuses before the service runs are 422 (FastAPI's own
validation answer). Every error body is a :class:`Problem`: ``error`` (a stable code),
``type`` (the raysource error class), ``detail``, and for 504 ``idempotency_key`` plus
``retry_safe`` (whether the service's references honour the key, i.e. whether re-sending the
same key is guaranteed not to apply the command twice).

    status, body, headers = http_error(CommandRejected("seat A1 is already reserved"))
    assert status == 409 and body["error"] == "rejected"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from raysource.errors import (
    AskTimeoutError,
    CommandRejected,
    ConfigError,
    HandlerError,
    JournalUnavailableError,
    NoLiveNodesError,
    NotAppliedError,
    OutcomeUnknownError,
    OverloadedError,
    PayloadTooLargeError,
    RaysourceError,
    UnknownAggregateTypeError,
    UnknownCommandError,
    UnknownEntityError,
    UnserializableError,
)
from raysource.service.errors import NotFoundError

__all__ = ["ERROR_RESPONSES", "HttpMapping", "Problem", "STATUS_TABLE", "http_error", "mapping_of"]


@dataclass(frozen=True)
class HttpMapping:
    """One row: ``error`` (and subclasses) answer ``status`` with the stable ``code``;
    ``retry_after_s`` adds a ``Retry-After`` header (an error's own ``retry_after_s`` wins)."""

    error: type[BaseException]
    status: int
    code: str
    retry_after_s: float | None = None


STATUS_TABLE: tuple[HttpMapping, ...] = (
    HttpMapping(CommandRejected, 409, "rejected"),
    HttpMapping(NotFoundError, 404, "not_found"),
    HttpMapping(UnknownAggregateTypeError, 404, "not_found"),
    HttpMapping(UnknownEntityError, 404, "not_found"),
    HttpMapping(PayloadTooLargeError, 413, "too_large"),
    HttpMapping(UnserializableError, 422, "bad_input"),
    HttpMapping(ConfigError, 400, "bad_input"),
    HttpMapping(OverloadedError, 429, "overloaded", retry_after_s=1.0),
    # before the 503 rows: JournalOutcomeUnknownError is also a JournalUnavailableError
    HttpMapping(OutcomeUnknownError, 504, "outcome_unknown"),
    HttpMapping(NoLiveNodesError, 503, "unavailable", retry_after_s=2.0),
    HttpMapping(JournalUnavailableError, 503, "unavailable", retry_after_s=1.0),
    HttpMapping(HandlerError, 500, "internal"),
    HttpMapping(UnknownCommandError, 500, "internal"),
    HttpMapping(NotAppliedError, 503, "unavailable", retry_after_s=1.0),
    HttpMapping(RaysourceError, 500, "internal"),
)


class Problem(BaseModel):
    """The body of every error answer (see the module docstring)."""

    error: str
    type: str
    detail: str
    category: str | None = None
    idempotency_key: str | None = None
    retry_safe: bool | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description}
    for status, description in (
        (400, "bad input (e.g. an invalid entity id)"),
        (409, "rejected by the aggregate: nothing was written"),
        (429, "overloaded: not applied, retry after Retry-After"),
        (503, "unavailable: not applied, retry after Retry-After"),
        (504, "outcome unknown: re-send with the returned Idempotency-Key"),
    )
}


def mapping_of(error: BaseException) -> HttpMapping:
    """The first row of :data:`STATUS_TABLE` that ``error`` is an instance of."""
    for row in STATUS_TABLE:
        if isinstance(error, row.error):
            return row
    return HttpMapping(type(error), 500, "internal")


def http_error(
    error: BaseException, *, idempotency_key: str | None = None, retry_safe: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` answering ``error`` (see :data:`STATUS_TABLE`).
    ``idempotency_key`` is the request's key (returned with an unknown outcome, so the client
    can re-send under it); ``retry_safe`` whether the references honour it."""
    row = mapping_of(error)
    detail = error.reason if isinstance(error, CommandRejected) else str(error)
    body: dict[str, Any] = {"error": row.code, "type": type(error).__name__, "detail": detail}
    headers: dict[str, str] = {}
    if isinstance(error, NotAppliedError) or (
        row.status in (429, 503) and not isinstance(error, OutcomeUnknownError)
    ):
        body["category"] = "not_applied"  # the 503 rows are raised before anything is sent
    elif isinstance(error, OutcomeUnknownError):
        body["category"] = "outcome_unknown"
        body["idempotency_key"] = idempotency_key
        body["retry_safe"] = retry_safe
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if isinstance(error, AskTimeoutError):
            body["detail"] = f"{detail} (re-send with the same Idempotency-Key, or read first)"
    retry_after = getattr(error, "retry_after_s", None) or row.retry_after_s
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return row.status, body, headers
