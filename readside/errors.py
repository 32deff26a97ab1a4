"""Errors of the read side (projections, views). The whole tree: :mod:`raysource.errors`."""

from __future__ import annotations

from raysource.journal.errors import RaysourceError

__all__ = ["ProjectionError"]


class ProjectionError(RaysourceError):
    """A projection (read-side processor) could not be started, controlled or queried."""
