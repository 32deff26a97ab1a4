"""Errors of the dev Cassandra node (:mod:`raysource.devnode.local_node`). The whole tree:
:mod:`raysource.errors`."""

from __future__ import annotations

from raysource.journal.errors import RaysourceError

__all__ = ["CassandraNodeError"]


class CassandraNodeError(RaysourceError):
    """The local Cassandra node could not be resolved, started, reached or stopped."""
