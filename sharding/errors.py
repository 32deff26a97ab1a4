"""Errors of the sharding layer (coordinator, regions, ``System``). The whole tree:
:mod:`raysource.errors`."""

from __future__ import annotations

from typing import Any

from raysource.journal.errors import ConfigError, RaysourceError

__all__ = ["ShardCountChangedError", "ShardingError", "NoLiveNodesError", "CoordinatorFencedError"]


class ShardCountChangedError(ConfigError):
    """A type's number of shards differs from the one stored for it.

    Entities are routed by ``hash(id) mod number_of_shards``; changing the count of a type that
    has data would route existing entities to other shards, so it is refused.
    """

    def __init__(self, type_name: str, stored: int, requested: int) -> None:
        self.type_name = type_name
        self.stored = stored
        self.requested = requested
        super().__init__(
            f"aggregate type {type_name!r} has {stored} shards; refusing to change it to "
            f"{requested} (the shard count is fixed for the life of the data)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.stored, self.requested))


class ShardingError(RaysourceError):
    """The shard coordinator could not do what was asked."""


class NoLiveNodesError(ShardingError):
    """No live node is available to host a shard (the cluster has no alive Ray node)."""


class CoordinatorFencedError(ShardingError):
    """This coordinator instance lost its journal to another instance and stopped serving.

    Raised for every call after its journal reported a ``ConcurrentWriteError`` (or, under the
    epoch guard, ``WriterFencedError``: the call's write has an unknown outcome); callers should
    look the coordinator up again (its name now leads to the current instance).
    """
