"""raysource.runtime: the aggregate API, the entity core and its host (Ray-free), and the Ray glue.

The names exported here are pure Python (no Ray, no cassandra-driver). The Ray glue lives apart,
in ``raysource.runtime.actors``: the host actor (``host_actor``), references (``refs``) and the
metrics export (``ray_metrics``).
"""

from raysource.runtime.aggregate import (
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
from raysource.runtime.core import CoreStats, EntityCore
from raysource.runtime.host import AggregateHost, HostStats
from raysource.runtime.recovery import RecoveryStats
from raysource.runtime.stores import StoreSpec, open_stores

__all__ = [
    "AggregateHost",
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
    "SnapshotPolicy",
    "StoreSpec",
    "none",
    "open_stores",
    "persist",
    "reject",
    "reply",
    "unknown_command",
]
