"""A running system's host actors and their hot aggregates (``raysource status``).

For every host actor of the system: its name, active entities, commands so far, and the top
entities by commands per second and by estimated queue wait over the host's last sweep
interval (:mod:`raysource.runtime.hot`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["host_status"]

_NOT_HOSTS = (":region:", ":timers:", ":retention")


def host_status(system: str, namespace: str | None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """``{"name", "active", "commands", "hot"}`` of every host actor of ``system`` that
    answered (the caller is connected to Ray)."""
    import ray

    from raysource.sharding.ray_nodes import named_actors

    names = [
        (n, ns)
        for n, ns in named_actors(namespace, f"{system}:")
        if not any(part in n for part in _NOT_HOSTS)
    ]
    handles = []
    for n, ns in names:
        try:
            handles.append((n, ray.get_actor(n, namespace=ns)))
        except ValueError:  # gone meanwhile
            continue
    out = []
    for n, h in handles:
        if not hasattr(h, "info"):
            continue
        try:
            info: Any = ray.get(h.info.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - a host that does not answer is shown as such
            out.append({"name": n, "error": "no answer"})
            continue
        if "hot" not in info:  # not a host (the coordinator answers info differently)
            continue
        out.append(
            {
                "name": n,
                "active": info.get("active", 0),
                "commands": info.get("stats", {}).get("commands", 0),
                "hot": info["hot"],
            }
        )
    return sorted(out, key=lambda h: h["name"])
