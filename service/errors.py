"""Errors of the HTTP front door (:mod:`raysource.service`): what a service replica refuses by
itself, before or after asking an aggregate or a view. The whole tree: :mod:`raysource.errors`;
how each error becomes an HTTP status: :mod:`raysource.service.http_errors`.
"""

from __future__ import annotations

from typing import Any

from raysource.journal.errors import RaysourceError
from raysource.runtime.errors import OverloadedError

__all__ = ["NotFoundError", "ReplicaOverloadedError", "ServiceError"]


class ServiceError(RaysourceError):
    """The service refused a request itself (not an aggregate's or a store's answer)."""


class NotFoundError(ServiceError, LookupError):
    """The resource a request names does not exist (e.g. the reservation of a free seat)."""


class ReplicaOverloadedError(ServiceError, OverloadedError):
    """The service replica already has as many requests in flight as it admits: this one was
    refused before anything was sent (not applied, like a full host's ``OverloadedError``),
    and may be re-sent after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # keep the field across pickling
        return (type(self), (str(self), self.retry_after_s))
