"""W3C trace context through raysource, end to end (optional: the ``raysource[otel]`` extra).

Ray-free. A command leaves a trace that survives the process boundaries this system has
(caller -> host actor -> journal -> projection, and a timer's schedule -> its fire):

* **the reference** (``raysource.runtime.actors.refs``): ``ask``/``ask_async``/``ask_many``/
  ``ask_many_async`` run in a span ``raysource.ask`` (kind CLIENT), and the command's
  :class:`~raysource.runtime.idempotency.Keyed` envelope carries that span's W3C
  ``traceparent``/``tracestate`` (a :class:`TraceCarrier`) to the host;
* **the host** (the entity core): per traced command a span ``raysource.command`` (SERVER,
  child of the reference's span) from the moment the host received it, with children
  ``raysource.command.queue`` (the wait in the mailbox), ``raysource.command.handler`` (the
  command handler and event handlers) and ``raysource.journal.append`` (attributes:
  persistence id, the group's first/last sequence numbers and size, the journal's guard);
* **the events**: every event of a traced command carries, in its ``metadata``, the
  ``traceparent`` (and ``tracestate``) of *its append's* span, in the same atomic write as the
  event (the Cassandra journal's ``meta`` column; the tag rows copy it);
* **the projections**: a worker handles an event (or a batch) in a span
  ``raysource.projection.handle`` (CONSUMER) that starts a trace of its own and is *linked* to
  the append span stored with each event: the same link whether the event is handled live or
  replayed years later;
* **timers**: the first event of a command that schedules a timer carries the trace context,
  and so does the timer's durable index row (``timer_index.traceparent``/``tracestate``,
  written with the row before the command is answered). The timer service sends the row's
  context with the fire, and the fire runs as ``raysource.timer.fire``, a **child** of the
  scheduling command's append span (the activation's own table, from the journal, first; the
  row's when the activation was restored from a snapshot, which keeps no trace). A child, not
  a link: a fire has exactly one cause, the schedule, and the question an operator asks
  ("what did this reservation lead to, including its expiry?") is answered by one trace. The
  call that delivered the fire (the timer service's ``raysource.ask`` span, when that process
  records spans) is a *link* of the fire's span: it is how, not why, the fire happened, and
  one delivery carries the fires of many traces;
* **the HTTP front door** (``raysource.service``): a request's ``traceparent``/``tracestate``
  headers are the parent of a span ``HTTP <method> <path>``, under which the reference's span
  runs.

Off switch and cost. :data:`ENABLED` is decided once, when this module is imported: the
OpenTelemetry API is importable and ``RAYSOURCE_TRACING`` is not ``0``/``off``. When off,
nothing here runs: the hot path's hooks are one ``if tracing.ENABLED`` (a module attribute)
each, and a command's envelope carries ``trace=None``. When on but no tracer provider is
configured (the extra installed, no exporter), the reference's span is OpenTelemetry's
non-recording span, no context is captured and the host does nothing either. Export is the
application's: configure an SDK ``TracerProvider`` in every process that runs raysource code
(drivers, and in Ray workers through ``ray.init(runtime_env={"worker_process_setup_hook":
...})``).

Known limit: commands of an aggregate type with idempotency keys off travel without an
envelope; they are traced at the reference only.

Exemplars. Prometheus exemplars (a trace id on a histogram bucket) cannot be had through Ray:
``ray.util.metrics.Histogram.observe(value, tags)`` takes no exemplar
(https://docs.ray.io/en/latest/ray-core/api/doc/ray.util.metrics.Histogram.observe.html), and
Ray's metrics agent builds each bucket as a ``[bound, count]`` pair, never the
``[bound, count, exemplar]`` that ``prometheus_client`` accepts (``ray/_private/
metrics_agent.py``, Ray 2.60: "a pair of bucket name and value, or a triple ... exemplar" — only
pairs are built). What stands in for them: a traced journal append that takes at least
:data:`SLOW_APPEND_S` (``RAYSOURCE_TRACE_SLOW_MS``, default 250 ms: the tail buckets of
``raysource_persist_latency_seconds``) logs one line per traced command of it (logger
``raysource.runtime.tracing``, level WARNING) with ``trace_id`` and ``span_id`` of its append
span beside ``persistence_id`` and ``sequence_nr``; with ``RAYSOURCE_LOG_JSON=1`` they are
top-level JSON fields, which a log store links to the trace (e.g. a Grafana derived field).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from raysource.journal.api import StoredEvent

__all__ = [
    "ENABLED",
    "TRACEPARENT",
    "TRACESTATE",
    "FlushTrace",
    "TraceCarrier",
    "current_carrier",
    "handling",
    "http_server_span",
    "instrument_refs",
    "trace_id_of",
]

TRACEPARENT = "traceparent"  # event metadata / HTTP header (W3C Trace Context)
TRACESTATE = "tracestate"

_otel: Any = None
try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel
    from opentelemetry.trace import Link, SpanKind, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: tracing is off for good
    ENABLED = False
else:
    ENABLED = os.environ.get("RAYSOURCE_TRACING", "on").strip().lower() not in (
        "0",
        "off",
        "false",
        "no",
    )

log = logging.getLogger(__name__)


def _slow_append_s() -> float:
    try:
        return max(0.0, float(os.environ.get("RAYSOURCE_TRACE_SLOW_MS", "250")) / 1000)
    except ValueError:
        return 0.25


SLOW_APPEND_S = _slow_append_s()  # a traced append this slow is logged with its trace id

if ENABLED:
    _PROP = TraceContextTextMapPropagator()
    _TRACER = _otel.get_tracer("raysource")  # a proxy: honours a provider set later


@dataclasses.dataclass(slots=True)
class TraceCarrier:
    """The W3C context a command travels with (in its ``Keyed`` envelope). ``received_ns``
    is set by the host when the command entered its mailbox (the queue wait's start)."""

    traceparent: str
    tracestate: str = ""
    received_ns: int = 0

    def headers(self) -> dict[str, str]:
        out = {TRACEPARENT: self.traceparent}
        if self.tracestate:
            out[TRACESTATE] = self.tracestate
        return out


def _inject(context: Any = None) -> dict[str, str]:
    out: dict[str, str] = {}
    _PROP.inject(out, context=context)
    return out


def current_carrier() -> TraceCarrier | None:
    """The caller's current OpenTelemetry context as a carrier (None: no valid span)."""
    headers = _inject()
    if TRACEPARENT not in headers:
        return None
    return TraceCarrier(headers[TRACEPARENT], headers.get(TRACESTATE, ""))


def _extract(headers: Mapping[str, str]) -> Any:
    return _PROP.extract(dict(headers))


def trace_id_of(traceparent: str) -> str:
    """The 32-hex-digit trace id of a ``traceparent`` ("" when malformed)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


# ---------------------------------------------------------------------- the reference


def instrument_refs(cls: type) -> None:
    """Wrap the reference's calls in a span ``raysource.ask`` (the current context then is
    the one its commands carry)."""
    for name in ("ask", "ask_many"):
        setattr(cls, name, _sync_span(getattr(cls, name), name))
    for name in ("ask_async", "ask_many_async"):
        setattr(cls, name, _async_span(getattr(cls, name), name))


def _ref_attributes(ref: Any, call: str) -> dict[str, Any]:
    return {
        "raysource.aggregate_type": ref.aggregate_type.name,
        "raysource.entity_id": ref.entity_id,
        "raysource.call": call,
    }


def _sync_span(fn: Callable[..., Any], call: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _TRACER.start_as_current_span(
            "raysource.ask", kind=SpanKind.CLIENT, attributes=_ref_attributes(self, call)
        ):
            return fn(self, *args, **kwargs)

    return traced


def _async_span(fn: Callable[..., Any], call: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _TRACER.start_as_current_span(
            "raysource.ask", kind=SpanKind.CLIENT, attributes=_ref_attributes(self, call)
        ):
            return await fn(self, *args, **kwargs)

    return traced


# ---------------------------------------------------------------------- the host


def guard_of(journal: Any) -> str:
    """The single-writer guard of ``journal`` (through wrappers' ``inner``), else "none"."""
    while not hasattr(journal, "guard") and hasattr(journal, "inner"):
        journal = journal.inner
    return str(getattr(journal, "guard", "none"))


@dataclasses.dataclass(slots=True)
class _Command:
    span: Any
    context: Any
    handler: Any
    lo: int = 0  # its events: flush.events[lo:hi]
    hi: int = 0
    append: Any = None

    def decided(self, lo: int, hi: int, error: BaseException | None) -> None:
        """The command's handler ran; its events are ``flush.events[lo:hi]``."""
        self.lo, self.hi = lo, hi
        if error is not None:
            self.handler.set_status(StatusCode.ERROR, repr(error))
            self.span.set_status(StatusCode.ERROR, repr(error))
        self.handler.end()


class FlushTrace:
    """The spans of one flush of an entity core (created only when :data:`ENABLED`)."""

    def __init__(self, persistence_id: str, type_name: str) -> None:
        self.persistence_id = persistence_id
        self.type_name = type_name
        self.started_ns = time.time_ns()
        self.commands: list[_Command] = []
        self._done = False
        self._append_started = 0.0
        self._sequence_nr = 0

    def begin(
        self,
        carrier: TraceCarrier | None,
        command: Any,
        fired_by: Mapping[str, str] | None = None,
    ) -> Any:
        """Start the spans of one command (its handler span is current until
        :meth:`decided`); None when it carries no context. ``fired_by``: a timer fire's
        scheduling trace context (W3C headers): the fire's parent, and then ``carrier`` (the
        delivering call's context) is a link (see the module docstring)."""
        links: list[Any] = []
        start = (carrier.received_ns if carrier is not None else 0) or self.started_ns
        if fired_by:
            parent = _extract(fired_by)
            if carrier is not None:
                delivery = _otel.get_current_span(_extract(carrier.headers())).get_span_context()
                if delivery.is_valid:
                    links.append(Link(delivery, {"raysource.link": "timer delivery"}))
        elif carrier is not None:
            parent = _extract(carrier.headers())
        else:
            return None
        name = "raysource.timer.fire" if fired_by else "raysource.command"
        span = _TRACER.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            links=links,
            start_time=start,
            attributes={
                "raysource.persistence_id": self.persistence_id,
                "raysource.aggregate_type": self.type_name,
                "raysource.command": type(command).__qualname__,
            },
        )
        ctx = _otel.set_span_in_context(span)
        _TRACER.start_span("raysource.command.queue", context=ctx, start_time=start).end(
            end_time=max(start, self.started_ns)
        )
        handler = _TRACER.start_span("raysource.command.handler", context=ctx)
        cmd = _Command(span, ctx, handler)
        self.commands.append(cmd)
        return cmd

    def before_append(self, events: list[StoredEvent], guard: str) -> list[StoredEvent]:
        """Start the append spans (one per traced command with events, in its trace) and
        return ``events`` with each traced command's events carrying its append's context."""
        out = events
        self._append_started = time.perf_counter()
        self._sequence_nr = events[-1].sequence_nr
        attributes = {
            "raysource.persistence_id": self.persistence_id,
            "raysource.sequence_nr.first": events[0].sequence_nr,
            "raysource.sequence_nr.last": events[-1].sequence_nr,
            "raysource.group_size": len(events),
            "raysource.guard": guard,
        }
        for cmd in self.commands:
            if cmd.hi <= cmd.lo:
                continue
            if out is events:
                out = list(events)
            cmd.append = _TRACER.start_span(
                "raysource.journal.append",
                context=cmd.context,
                kind=SpanKind.CLIENT,
                attributes={
                    **attributes,
                    "raysource.command.first": events[cmd.lo].sequence_nr,
                    "raysource.command.last": events[cmd.hi - 1].sequence_nr,
                },
            )
            stamp = _inject(_otel.set_span_in_context(cmd.append))
            for i in range(cmd.lo, cmd.hi):
                e = out[i]
                out[i] = dataclasses.replace(e, metadata={**e.metadata, **stamp})
        return out

    def after_append(self, error: BaseException | None) -> None:
        took = time.perf_counter() - self._append_started
        for cmd in self.commands:
            if cmd.append is not None and took >= SLOW_APPEND_S:
                sc = cmd.append.get_span_context()
                log.warning(
                    "%s: slow journal append: %.0f ms (trace %032x)",
                    self.persistence_id,
                    took * 1000,
                    sc.trace_id,
                    extra={
                        "persistence_id": self.persistence_id,
                        "sequence_nr": self._sequence_nr,
                        "type": self.type_name,
                        "trace_id": f"{sc.trace_id:032x}",
                        "span_id": f"{sc.span_id:016x}",
                    },
                )
            if cmd.append is not None:
                if error is not None:
                    cmd.append.record_exception(error)
                    cmd.append.set_status(StatusCode.ERROR, repr(error))
                cmd.append.end()
                cmd.append = None
        if error is not None:
            self.finish()

    def finish(self) -> None:
        """End the command spans (the callers are answered). Idempotent."""
        if self._done:
            return
        self._done = True
        for cmd in self.commands:
            if cmd.handler.is_recording():
                cmd.handler.end()
            cmd.span.end()


# ---------------------------------------------------------------------- the read side


def _links(events: Sequence[StoredEvent]) -> list[Any]:
    links = []
    for e in events:
        tp = e.metadata.get(TRACEPARENT) if e.metadata else None
        if tp:
            sc = _otel.get_current_span(_extract(e.metadata)).get_span_context()
            if sc.is_valid:
                links.append(
                    Link(
                        sc,
                        {
                            "raysource.persistence_id": e.persistence_id,
                            "raysource.sequence_nr": e.sequence_nr,
                        },
                    )
                )
    return links


@contextlib.contextmanager
def handling(projection: str, events: Sequence[StoredEvent]) -> Iterator[Any]:
    """A projection handles ``events``: a span of a trace of its own (not a child of the
    worker's context), linked to each event's append span."""
    with _TRACER.start_as_current_span(
        "raysource.projection.handle",
        context=_otel_context.Context(),
        kind=SpanKind.CONSUMER,
        links=_links(events),
        attributes={
            "raysource.projection": projection,
            "raysource.events": len(events),
            "raysource.persistence_id": events[0].persistence_id if events else "",
            "raysource.sequence_nr.first": events[0].sequence_nr if events else 0,
        },
    ) as span:
        yield span


# ---------------------------------------------------------------------- the HTTP front door


@contextlib.contextmanager
def http_server_span(scope: Mapping[str, Any]) -> Iterator[Any]:
    """An ASGI HTTP request's span, the child of its ``traceparent`` header if any."""
    headers = {
        k.decode("latin-1").lower(): v.decode("latin-1")
        for k, v in scope.get("headers", ())
        if k.lower() in (b"traceparent", b"tracestate")
    }
    method, path = scope.get("method", ""), scope.get("path", "")
    with _TRACER.start_as_current_span(
        f"HTTP {method} {path}",
        context=_extract(headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    ) as span:
        yield span
