"""Errors of the read side (projections, views). The whole tree: :mod:`raysource.errors`."""

from __future__ import annotations

from raysource.journal.errors import RaysourceError

__all__ = ["ProjectionError", "SwitchRefusedError"]


class ProjectionError(RaysourceError):
    """A projection (read-side processor) could not be started, controlled or queried."""


class SwitchRefusedError(ProjectionError):
    """``projection switch`` refused to make a version live (it is behind the live version's
    high-water mark, or its view does not verify): the alias is unchanged, every reader still
    reads the version it read."""
