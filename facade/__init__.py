"""raysource: sharded, single-writer, event-sourced aggregates on Ray, journaled to Cassandra.

The public API. ``import raysource`` is cheap and Ray-free; the names that need Ray (``System``,
``EntityRef``) load it on first access.

Layers (imports go one way, down; ``tests/project/test_layers.py`` checks it)::

    raysource.cli        the ``raysource`` command line: argument parsing and printing only
    raysource.loadtest   load test (workloads, clients, report, consistency check), demo, serve
    raysource.ops        operator tools: inspect/replay, live state, status, forget, doctor
    raysource.examples   seat reservations (aggregate, HTTP service), a ledger, a read-side view
    raysource.service    the HTTP front door (Ray Serve + FastAPI)
    raysource.devnode    the dev Cassandra node (Maven jars, no Docker) and where to find one
    raysource.testing    test kit, fault injection, history checker, contract suites
    raysource.data       the event log as a Ray Dataset, bulk rebuilds of projection versions
    raysource.sharding   shard allocation (pure), coordinator, regions, System
    raysource.readside   projections, views
    raysource.runtime    aggregate API, entity core + host (no Ray); runtime.actors: Ray glue
    raysource.snapshots  SnapshotStore SPI, Cassandra + in-memory
    raysource.timers     the durable-timer index SPI, Cassandra + in-memory
    raysource.journal    Journal SPI, errors, serialization; journal.cassandra: the store

The rooms are the ``raysource.*`` entries of pyproject's ``package-dir`` (each maps to its folder
at the repository root; this package itself lives in ``facade/``).

Errors: ``raysource.errors`` lists the whole tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysource.errors import *  # noqa: F403 - the error tree is part of the public API
from raysource.errors import __all__ as _errors
from raysource.journal._lazy import lazy_getattr
from raysource.journal.retention import KeepAll, KeepFromSnapshot, KeepUntilFinal
from raysource.runtime.aggregate import (
    AggregateType,
    Effect,
    IdempotencyPolicy,
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
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec

__all__ = [
    "AggregateTestKit",
    "AggregateType",
    "CassandraConfig",
    "Effect",
    "EntityRef",
    "IdempotencyPolicy",
    "KeepAll",
    "KeepFromSnapshot",
    "KeepUntilFinal",
    "Keyed",
    "NoOp",
    "Persist",
    "Reject",
    "Reply",
    "SnapshotPolicy",
    "StoreSpec",
    "System",
    "none",
    "persist",
    "reject",
    "reply",
    "unknown_command",
    *_errors,
]

# the lazy names below, for type checkers and IDEs (tests/project/test_static_tools.py)
if TYPE_CHECKING:
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.runtime.actors.refs import EntityRef
    from raysource.sharding.system import System
    from raysource.testing.testkit import AggregateTestKit

_LAZY = {
    "System": "raysource.sharding.system",
    "EntityRef": "raysource.runtime.actors.refs",
    "AggregateTestKit": "raysource.testing.testkit",
    "CassandraConfig": "raysource.journal.cassandra.config",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
