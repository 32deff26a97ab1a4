"""The runtime's metrics, recorded without Ray.

Every metric raysource records is declared once in :data:`METRICS` (Prometheus name, kind,
labels, help, histogram buckets). Components record through a :class:`Metrics` object:

* :class:`Metrics` (the default) keeps the values in memory: counters and gauges by label set,
  histograms as count, sum and bucket counts. ``info()``/``status`` and tests read them through
  :meth:`Metrics.value`, :meth:`Metrics.histogram` and :meth:`Metrics.snapshot`.
* ``raysource.runtime.actors.ray_metrics.RayMetrics`` (used only inside Ray actors) keeps the same
  in-memory values and forwards every record to ``ray.util.metrics``, which Ray exports to
  Prometheus (prefixed ``ray_``) when its metrics agent runs (``ray[default]``).

Recording never raises into the runtime: a metric is diagnostics, never a reason to fail a
command.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "METRICS",
    "error_kind",
    "HistogramValue",
    "MetricKind",
    "MetricSpec",
    "Metrics",
]

log = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]

# seconds: a journal write is ~1-20 ms on a healthy cluster; the tail shows timeouts
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# seconds: recovery ranges from a snapshot read (ms) to replaying a long history (tens of s)
RECOVERY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# seconds: a timer service polls every second; the tail shows a backlog after downtime
TIMER_LATENESS_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its Prometheus name, kind, label names, help text and (histograms) bucket
    upper bounds."""

    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "raysource_commands_total",
            "counter",
            ("type", "outcome"),
            "Commands processed, by outcome: accepted (replied), rejected (CommandRejected), "
            "error (any other error: handler, serialization, persist failed, stopped)",
        ),
        MetricSpec(
            "raysource_persist_latency_seconds",
            "histogram",
            ("type",),
            "Duration of one successful journal write (one group-committed flush)",
            LATENCY_BUCKETS,
        ),
        MetricSpec(
            "raysource_events_persisted_total",
            "counter",
            ("type",),
            "Events durably written to the journal",
        ),
        MetricSpec(
            "raysource_journal_writes_total",
            "counter",
            ("type",),
            "Journal writes (flushes with events); below commands under group commit",
        ),
        MetricSpec(
            "raysource_recovery_seconds",
            "histogram",
            ("type",),
            "Duration of one recovery (snapshot load + replay)",
            RECOVERY_BUCKETS,
        ),
        MetricSpec(
            "raysource_active_aggregates",
            "gauge",
            ("type", "host"),
            "Aggregates with a live entity core in a host",
        ),
        MetricSpec(
            "raysource_passivations_total",
            "counter",
            ("type", "reason"),
            "Aggregates leaving a host, by reason: idle, evicted, passivated, handoff, "
            "closed, fenced",
        ),
        MetricSpec(
            "raysource_journal_errors_total",
            "counter",
            ("type", "kind"),
            "Failed journal writes and recoveries, by kind: fenced, unavailable, invalid, "
            "serialization, other; failed snapshot saves: snapshot",
        ),
        MetricSpec(
            "raysource_projection_lag_events",
            "gauge",
            ("projection", "slice"),
            "Visible events of a projection slice not handled yet",
        ),
        MetricSpec(
            "raysource_projection_parked",
            "gauge",
            ("projection", "slice"),
            "Aggregate streams a projection slice parked (a poison event; see projection parked)",
        ),
        MetricSpec(
            "raysource_hot_aggregate_commands_per_second",
            "gauge",
            ("type", "host", "entity"),
            "The top entities of a host by commands per second over its last sweep interval "
            "(raysource.runtime.hot; 0 once an entity left the top)",
        ),
        MetricSpec(
            "raysource_hot_aggregate_queue_wait_seconds",
            "gauge",
            ("type", "host", "entity"),
            "The top entities of a host by estimated queue wait (queued / commands per second)",
        ),
        MetricSpec(
            "raysource_projection_lag_seconds",
            "gauge",
            ("projection", "slice"),
            "Age of the oldest unhandled event of a projection slice (0 when caught up)",
        ),
        MetricSpec(
            "raysource_timers_fired_total",
            "counter",
            ("type",),
            "Durable timer fires answered by their aggregate (run, rejected or stale)",
        ),
        MetricSpec(
            "raysource_timer_lateness_seconds",
            "histogram",
            ("type",),
            "Answer time of a timer fire minus its due time",
            TIMER_LATENESS_BUCKETS,
        ),
    )
}

_LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class HistogramValue:
    """Count, sum and per-bucket counts (not cumulative; the last entry is +Inf)."""

    count: int = 0
    sum: float = 0.0
    buckets: list[int] = field(default_factory=list)


class Metrics:
    """In-memory recorder of :data:`METRICS` (thread-safe; cheap enough for every command).

    The generic :meth:`inc`, :meth:`observe` and :meth:`set` take the metric's full name and
    its labels as keywords; the named helpers (:meth:`command`, :meth:`journal_write`, ...)
    are what the runtime calls. Subclasses forward records elsewhere by overriding
    :meth:`_forward`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[_LabelKey, float]] = {}
        self._histograms: dict[str, dict[_LabelKey, HistogramValue]] = {}
        self._failed: set[str] = set()  # metrics whose forwarding failed (logged once)

    # ------------------------------------------------------------------ generic

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` (> 0) to counter ``name``."""
        if value <= 0:
            return
        key = self._key(name, "counter", labels)
        if key is None:
            return
        with self._lock:
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value
        self._safe_forward(name, value, labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` to ``value``."""
        key = self._key(name, "gauge", labels)
        if key is None:
            return
        with self._lock:
            self._values.setdefault(name, {})[key] = float(value)
        self._safe_forward(name, value, labels)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation of histogram ``name``."""
        key = self._key(name, "histogram", labels)
        if key is None:
            return
        bounds = METRICS[name].buckets
        with self._lock:
            h = self._histograms.setdefault(name, {}).get(key)
            if h is None:
                h = self._histograms[name][key] = HistogramValue(buckets=[0] * (len(bounds) + 1))
            h.count += 1
            h.sum += value
            h.buckets[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
        self._safe_forward(name, value, labels)

    # ------------------------------------------------------------------ the runtime's records

    def command(self, type: str, outcome: str, n: int = 1) -> None:
        """``n`` commands of aggregate ``type`` ended with ``outcome``
        (accepted/rejected/error)."""
        self.inc("raysource_commands_total", n, type=type, outcome=outcome)

    def journal_write(self, type: str, events: int, seconds: float) -> None:
        """One successful journal write of ``events`` events that took ``seconds``."""
        self.observe("raysource_persist_latency_seconds", seconds, type=type)
        self.inc("raysource_journal_writes_total", 1, type=type)
        self.inc("raysource_events_persisted_total", events, type=type)

    def recovery(self, type: str, seconds: float) -> None:
        """One completed recovery of an aggregate of ``type``."""
        self.observe("raysource_recovery_seconds", seconds, type=type)

    def journal_error(self, type: str, kind: str) -> None:
        """One failed journal or snapshot store operation (see :func:`error_kind`)."""
        self.inc("raysource_journal_errors_total", 1, type=type, kind=kind)

    def active_aggregates(self, type: str, host: str, n: int) -> None:
        self.set("raysource_active_aggregates", n, type=type, host=host)

    def passivation(self, type: str, reason: str) -> None:
        self.inc("raysource_passivations_total", 1, type=type, reason=reason)

    def projection_lag(
        self, projection: str, slice: str, events: int | None, seconds: float | None
    ) -> None:
        """The lag of one projection slice; None (journal unreadable) records nothing."""
        if events is not None:
            self.set("raysource_projection_lag_events", events, projection=projection, slice=slice)
        if seconds is not None:
            self.set(
                "raysource_projection_lag_seconds", seconds, projection=projection, slice=slice
            )

    # ------------------------------------------------------------------ reading

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value; labels not given are summed over (0 if none)."""
        with self._lock:
            series = dict(self._values.get(name, {}))
        return sum(v for k, v in series.items() if _matches(k, labels))

    def histogram(self, name: str, **labels: str) -> HistogramValue:
        """A histogram's count and sum over the matching label sets (buckets summed too)."""
        out = HistogramValue(buckets=[0] * (len(METRICS[name].buckets) + 1))
        with self._lock:
            for k, h in self._histograms.get(name, {}).items():
                if _matches(k, labels):
                    out.count += h.count
                    out.sum += h.sum
                    out.buckets = [a + b for a, b in zip(out.buckets, h.buckets)]
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every recorded series, picklable: ``{name: {"type=show,outcome=accepted": value}}``;
        a histogram's value is ``{"count": n, "sum": s}``."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name, series in self._values.items():
                out[name] = {_label_str(k): v for k, v in series.items()}
            for name, hseries in self._histograms.items():
                out[name] = {
                    _label_str(k): {"count": h.count, "sum": h.sum} for k, h in hseries.items()
                }
        return out

    @property
    def forward_errors(self) -> list[str]:
        """Metrics whose record failed at least once (forwarding, or labels not as declared):
        empty when all is well."""
        return sorted(self._failed)

    # ------------------------------------------------------------------ internals

    def _key(self, name: str, kind: MetricKind, labels: Mapping[str, str]) -> _LabelKey | None:
        spec = METRICS.get(name)
        if spec is None or spec.kind != kind or set(labels) != set(spec.labels):
            # a programming error, but never one that fails a command
            if name not in self._failed:
                self._failed.add(name)
                log.error(
                    "metric %s (%s) recorded with labels %s: not as declared",
                    name,
                    kind,
                    sorted(labels),
                )
            return None
        return tuple((k, str(labels[k])) for k in spec.labels)

    def _safe_forward(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        try:
            self._forward(METRICS[name], value, {k: str(v) for k, v in labels.items()})
        except Exception as exc:
            if name not in self._failed:
                self._failed.add(name)
                log.warning("forwarding metric %s failed (recorded in memory only): %r", name, exc)

    def _forward(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        """Hook for subclasses: called after every in-memory record."""


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of ``raysource_journal_errors_total`` for a store error: fenced,
    unavailable (includes timeouts: the outcome may be unknown), invalid, serialization,
    other."""
    from raysource.journal import errors  # Ray-free; late so importing metrics stays cheap

    if isinstance(exc, errors.ConcurrentWriteError):
        return "fenced"
    if isinstance(exc, (errors.JournalUnavailableError, TimeoutError, ConnectionError)):
        return "unavailable"
    if isinstance(exc, errors.InvalidAppendError):
        return "invalid"
    if isinstance(exc, errors.SerializationError):
        return "serialization"
    return "other"


def _matches(key: _LabelKey, labels: Mapping[str, str]) -> bool:
    d = dict(key)
    return all(d.get(k) == str(v) for k, v in labels.items())


def _label_str(key: _LabelKey) -> str:
    return ",".join(f"{k}={v}" for k, v in key)
