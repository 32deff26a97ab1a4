"""raysource runtime: the aggregate API, the entity core and the test kit.

The names exported here are pure Python (no Ray, no cassandra-driver). The Ray host actors live
in their own modules: ``runtime.ray_host`` (HostActor, HostSpec) and ``runtime.refs``
(EntityRef, LocalResolver, Resolver).
"""

from runtime.aggregate import (
    AggregateType,
    Effect,
    NoOp,
    Persist,
    Reject,
    Reply,
    SnapshotPolicy,
    none,
    persist,
    reject,
    reply,
    unknown_command,
)
from runtime.core import CoreStats, EntityCore, RecoveryStats
from runtime.host import AggregateHost, HostStats
from runtime.stores import StoreSpec, open_stores
from runtime.testkit import AggregateTestKit, RunResult

__all__ = [
    "AggregateHost",
    "AggregateTestKit",
    "AggregateType",
    "CoreStats",
    "Effect",
    "EntityCore",
    "HostStats",
    "NoOp",
    "Persist",
    "RecoveryStats",
    "Reject",
    "Reply",
    "RunResult",
    "SnapshotPolicy",
    "StoreSpec",
    "none",
    "open_stores",
    "persist",
    "reject",
    "reply",
    "unknown_command",
]
