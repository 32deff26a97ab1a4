"""Errors of the operator tools (inspect/replay, live state, forget). The whole tree:
:mod:`raysource.errors`."""

from __future__ import annotations

from raysource.journal.errors import ConfigError

__all__ = [
    "UnknownAggregateTypeError",
    "UnknownEntityError",
    "InvalidRangeError",
]


class UnknownAggregateTypeError(ConfigError):
    """No aggregate type of the requested name is known to the application."""


class UnknownEntityError(ConfigError):
    """The journal holds no event for this entity (it was never created, or the id, type or
    keyspace is misspelt)."""


class InvalidRangeError(ConfigError):
    """A sequence-number range that cannot be inspected (below 1, reversed, or beyond the
    highest sequence number of the entity)."""
