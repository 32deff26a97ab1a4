"""The sharding layer's only contact with Ray: node membership, placement options, and the
coordinator actor. Everything else in ``sharding`` is testable without Ray.

Ray has no push notification for membership changes: the coordinator polls ``live_nodes``.
A crashed node shows up as dead after Ray's health check gives up (~14 s by default; e.g.
``_system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3}`` on
the head brings it to ~2 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysource.journal.api import Journal
from raysource.runtime.actors.cluster import coordinator_name
from raysource.sharding.allocation import NodeId
from raysource.sharding.coordinator import CoordinatorSettings, ShardCoordinator

__all__ = [
    "FAST_HEALTH_CHECKS",
    "coordinator_name",
    "dead_node_detection_s",
    "current_node_id",
    "get_coordinator",
    "get_or_create_coordinator",
    "live_nodes",
    "named_actors",
    "node_affinity",
    "stop_coordinator",
]


#: Ray ``_system_config`` for the head node that notices a dead node in ~1.5 s (period x
#: failure threshold) instead of Ray's ~14 s default: test clusters and benchmarks use it;
#: ``deploy/`` sets the same through ``RAY_health_check_*`` environment variables.
FAST_HEALTH_CHECKS: dict[str, int] = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


def dead_node_detection_s(system_config: dict[str, int]) -> float:
    """About how long Ray takes to declare a crashed node dead under ``system_config``."""
    return (
        system_config["health_check_period_ms"] * system_config["health_check_failure_threshold"]
    ) / 1000


def live_nodes() -> list[NodeId]:
    """Hex ids of the nodes Ray reports alive (a blocking GCS call: run it off the loop)."""
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def current_node_id() -> NodeId:
    """Hex id of the node this process runs on."""
    return ray.get_runtime_context().get_node_id()


def node_affinity(node_id: NodeId, *, soft: bool = False, num_cpus: float = 0.01) -> dict[str, Any]:
    """Actor ``.options(**...)`` that pin an actor to ``node_id``.

    A small non-zero CPU request is needed: Ray places zero-resource actors at random. With
    ``soft=False`` creation fails (rather than landing elsewhere) if the node is gone.
    """
    return {
        "num_cpus": num_cpus,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft),
    }


def named_actors(namespace: str | None, prefix: str = "") -> list[tuple[str, str]]:
    """``(name, namespace)`` of the live named actors in ``namespace`` (all namespaces if
    None) whose name starts with ``prefix``. A blocking GCS call: run it off the loop."""
    return [
        (e["name"], e["namespace"])
        for e in ray.util.list_named_actors(all_namespaces=True)
        if (namespace is None or e["namespace"] == namespace) and e["name"].startswith(prefix)
    ]


def get_or_create_coordinator(
    system: str,
    journal_factory: Callable[[], Journal | Awaitable[Journal]],
    settings: CoordinatorSettings | None = None,
    *,
    namespace: str | None = None,
    actor_options: dict[str, Any] | None = None,
):
    """The system's coordinator actor handle, created if it does not exist yet.

    Named ``raysource-coordinator-<system>``, detached (outlives the driver), restarted by Ray
    without limit (``__init__`` re-runs, so it recovers its table from the journal built by
    ``journal_factory``, which must be picklable). If the actor exists, it is returned as is:
    ``journal_factory``/``settings`` of this call are then ignored. Every method of
    :class:`~raysource.sharding.coordinator.ShardCoordinator` is called as
    ``handle.<method>.remote()``. ``actor_options`` override Ray options (e.g. ``node_affinity(head,
    soft=True)``).
    """
    options: dict[str, Any] = {
        "name": coordinator_name(system),
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }
    if namespace is not None:
        options["namespace"] = namespace
    options.update(actor_options or {})
    actor_cls = ray.remote(ShardCoordinator)
    return actor_cls.options(**options).remote(
        system, journal_factory, live_nodes, settings, on_fenced=_restart_this_process
    )


def _restart_this_process() -> None:
    """A fenced coordinator ends its process: Ray (``max_restarts=-1``) starts a fresh instance
    that recovers the table from the journal, instead of a live actor that refuses to serve."""
    import os

    os._exit(1)


def get_coordinator(system: str, *, namespace: str | None = None):
    """The existing coordinator of ``system`` (``ValueError`` if there is none)."""
    return ray.get_actor(coordinator_name(system), namespace=namespace)


def stop_coordinator(system: str, *, namespace: str | None = None) -> bool:
    """Kill the coordinator of ``system`` for good (no restart). False if none was running."""
    try:
        handle = get_coordinator(system, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
