"""The Ray recorder: :class:`~raysource.runtime.metrics.Metrics` that also records into
``ray.util.metrics``. Use only inside Ray actors (host and projection actors).

Ray exports these to Prometheus with a ``ray_`` prefix (``ray_raysource_commands_total``) from
each node's metrics agent, which only ``ray[default]`` installs (``pip install
raysource[metrics]``); with plain ``ray`` the records are accepted and dropped by Ray, while the
in-memory values still feed ``info()`` and ``status``.
"""

from __future__ import annotations

import threading
from typing import Any

from ray.util import metrics as ray_metrics

from raysource.runtime.metrics import METRICS, Metrics, MetricSpec

__all__ = ["RayMetrics"]

# One Ray metric object per name and process: several recorders in one actor share them.
_ray_objects: dict[str, Any] = {}
_ray_lock = threading.Lock()


def _ray_metric(spec: MetricSpec) -> Any:
    with _ray_lock:
        obj = _ray_objects.get(spec.name)
        if obj is None:
            if spec.kind == "counter":
                obj = ray_metrics.Counter(spec.name, spec.help, tag_keys=spec.labels)
            elif spec.kind == "gauge":
                obj = ray_metrics.Gauge(spec.name, spec.help, tag_keys=spec.labels)
            else:
                obj = ray_metrics.Histogram(
                    spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels
                )
            _ray_objects[spec.name] = obj
        return obj


class RayMetrics(Metrics):
    """In-memory values plus ``ray.util.metrics`` (see the module docstring)."""

    def _forward(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        obj = _ray_metric(spec)
        if spec.kind == "counter":
            obj.inc(value, tags=labels)
        elif spec.kind == "gauge":
            obj.set(value, tags=labels)
        else:  # no exemplar: Ray's API takes none (see raysource.runtime.tracing, "Exemplars")
            obj.observe(value, tags=labels)


def declare_all() -> None:
    """Create every Ray metric object now (so Prometheus lists them before the first record)."""
    for spec in METRICS.values():
        _ray_metric(spec)
