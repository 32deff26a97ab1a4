"""A live aggregate's current state, read from a running system (``raysource state``).

    state = live_state("shop", SHOW, "hamlet", config, namespace="raysource")

Joins the running system with :meth:`~raysource.sharding.system.System.connect` (nothing is
started: no coordinator, no type registration, no timer service), asks the aggregate for its
state (activating it if it is not active: read-only, nothing is journaled) and hides the
personal data of subjects forgotten since the aggregate decoded it. The caller has connected
this process to Ray (``raysource.runtime.actors.cluster.connect_ray``).
"""

from __future__ import annotations

from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.ops.inspect import scrub_forgotten
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.stores import StoreSpec

__all__ = ["live_state"]


def live_state(
    system: str,
    aggregate_type: AggregateType,
    entity_id: str,
    config: CassandraConfig,
    *,
    namespace: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """The current state of ``(aggregate_type, entity_id)`` in the running ``system``.

    ``ConfigError`` when no such system runs or the type is not registered in it (nothing is
    created either way); a bad entity id is a ``ConfigError`` before Ray is asked anything."""
    from raysource.sharding.system import System

    aggregate_type.persistence_id(entity_id)
    joined = System.connect(
        system, store=StoreSpec.for_cassandra(config), types=[aggregate_type], namespace=namespace
    )
    state = joined.entity(aggregate_type.name, entity_id).state(timeout=timeout)
    return scrub_forgotten(state, aggregate_type, config)  # the live state may predate a forget
