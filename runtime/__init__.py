"""raysource runtime: the aggregate API, the entity core and the test kit.

The names exported here are pure Python (no Ray, no cassandra-driver). The Ray host actors live
in their own modules.
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
from runtime.testkit import AggregateTestKit, RunResult

__all__ = [
    "AggregateTestKit",
    "AggregateType",
    "CoreStats",
    "Effect",
    "EntityCore",
    "NoOp",
    "Persist",
    "RecoveryStats",
    "Reject",
    "Reply",
    "RunResult",
    "SnapshotPolicy",
    "none",
    "persist",
    "reject",
    "reply",
    "unknown_command",
]
