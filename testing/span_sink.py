"""Collect the spans of every process of a Ray job in one place, for tests of tracing.

A span ends in whatever process ran the code (the driver, a host actor, a projection worker,
a Serve replica); OpenTelemetry's SDK span objects cannot be pickled, so each process exports
them as the SDK's JSON (``ReadableSpan.to_json``) to one named actor, :class:`SpanSink`.

    ray.init(..., runtime_env={"worker_process_setup_hook": install_forwarding})
    install_forwarding()          # the driver too
    sink = start_sink()
    ...                           # traced work
    spans = ray.get(sink.spans.remote())   # [dict] in the SDK's JSON form

Needs the ``raysource[otel]`` extra (the SDK).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import ray

__all__ = ["SINK_NAME", "SpanSink", "install_forwarding", "start_sink"]

SINK_NAME = "raysource-span-sink"


class _SpanSink:
    """Holds the spans exported by every process (as JSON dicts)."""

    def __init__(self) -> None:
        self._spans: list[dict[str, Any]] = []

    def add(self, spans: list[str]) -> None:
        self._spans.extend(json.loads(s) for s in spans)

    def spans(self) -> list[dict[str, Any]]:
        return list(self._spans)

    def clear(self) -> None:
        self._spans.clear()


SpanSink: Any = ray.remote(num_cpus=0)(_SpanSink)


def start_sink() -> Any:
    """The job's sink (created if needed, named :data:`SINK_NAME` in the job's namespace)."""
    return SpanSink.options(name=SINK_NAME, get_if_exists=True).remote()


def install_forwarding() -> None:
    """Install an SDK tracer provider whose spans go to the sink (a Ray worker setup hook)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class _Forward(SpanExporter):
        def __init__(self) -> None:
            self._sink: Any = None
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            try:
                with self._lock:
                    if self._sink is None:
                        self._sink = ray.get_actor(SINK_NAME)
                self._sink.add.remote([s.to_json(indent=None) for s in spans])
            except Exception:  # noqa: BLE001 - no sink (yet): the spans are dropped
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Forward()))
    trace.set_tracer_provider(provider)
