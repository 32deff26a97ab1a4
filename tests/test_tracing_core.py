"""Trace context in the entity core, Ray-free, with the OpenTelemetry SDK's in-memory exporter
(issue 28): a traced command's spans (command, queue wait, handler, journal append with its
attributes), the append span's context in every event's metadata, a timer fire continuing the
trace that scheduled it, a projection's handling linked (not parented) to the append, and
nothing at all when tracing is off. The same path through Ray, Serve and Cassandra:
tests/test_tracing_ray.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from test_timers_core import World
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import GetShow, HoldSeat, SeatHeld
from raysource.runtime import tracing
from raysource.runtime.idempotency import Keyed

otel = pytest.importorskip("opentelemetry.sdk.trace", reason="the raysource[otel] extra")


@pytest.fixture(scope="module")
def exporter():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exp = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exp)
    provider.add_span_processor(processor)
    yield exp
    processor.shutdown()  # later tests in this process export nothing here


def _tp(event) -> tuple[str, str]:
    """(trace id, span id) of an event's stored traceparent."""
    _version, trace_id, span_id, _flags = event.metadata["traceparent"].split("-")
    return trace_id, span_id


def _ids(span) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def test_a_traced_command_its_events_its_timer_fire_and_a_projection(exporter) -> None:
    from opentelemetry import trace

    assert tracing.ENABLED
    exporter.clear()

    async def main():
        w = World()
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            carrier = tracing.current_carrier()
            held = await w.core("s1").handle(Keyed(HoldSeat("A1", "ann", 60), "k-1", carrier))
        assert held == SeatHeld("A1", "ann", 60.0)
        trace_id = f"{caller.get_span_context().trace_id:032x}"
        spans = {s.name: s for s in exporter.get_finished_spans()}
        command, append = spans["raysource.command"], spans["raysource.journal.append"]
        assert command.parent.span_id == caller.get_span_context().span_id
        for child in ("raysource.command.queue", "raysource.command.handler"):
            assert spans[child].parent.span_id == command.context.span_id
        assert append.parent.span_id == command.context.span_id
        assert (
            spans["raysource.command.queue"].end_time
            <= spans["raysource.command.handler"].start_time
        )
        assert dict(append.attributes) == {
            "raysource.persistence_id": "show|s1",
            "raysource.sequence_nr.first": 1,
            "raysource.sequence_nr.last": 1,
            "raysource.group_size": 1,
            "raysource.guard": "none",  # the in-memory journal guards in process
            "raysource.command.first": 1,
            "raysource.command.last": 1,
        }
        [stored] = await w.events("s1")
        assert _tp(stored) == _ids(append) and _ids(append)[0] == trace_id
        assert "ts" in stored.metadata  # the schedule, in the same first event

        # the fire, from a fresh activation (the trace comes from the journal), continues it
        await w.passivate()
        exporter.clear()
        w.clock.now += timedelta(seconds=61)
        pump = w.pump()
        assert await pump.run_once() == 1
        await pump.drain()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        fire = spans["raysource.timer.fire"]
        assert _ids(fire)[0] == trace_id and fire.parent.span_id == append.context.span_id
        assert spans["raysource.journal.append"].parent.span_id == fire.context.span_id
        released = (await w.events("s1"))[1]
        assert _tp(released) == _ids(spans["raysource.journal.append"])
        assert (await w.core("s1").handle(GetShow())).holds == {}

        # a projection's handling: a trace of its own, linked to each event's append
        exporter.clear()
        events = await w.events("s1")
        with trace.get_tracer("test").start_as_current_span("worker's own work"):
            with tracing.handling("view", events):
                pass
        [handle] = [s for s in exporter.get_finished_spans() if s.name.startswith("raysource")]
        assert handle.parent is None and _ids(handle)[0] != trace_id
        assert [_ids_of_link(link) for link in handle.links] == [_tp(e) for e in events]

    asyncio.run(main())


def _ids_of_link(link) -> tuple[str, str]:
    return f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"


def test_tracing_off_records_nothing_and_stores_nothing(exporter, monkeypatch) -> None:
    from opentelemetry import trace

    async def main():
        w = World()
        with trace.get_tracer("test").start_as_current_span("caller"):
            carrier = tracing.current_carrier()
            monkeypatch.setattr(tracing, "ENABLED", False)
            exporter.clear()
            await w.core("s2").handle(Keyed(HoldSeat("A2", "bo", 60), "k-2", carrier))
        assert [s.name for s in exporter.get_finished_spans()] == ["caller"]
        [stored] = await w.events("s2")
        assert "traceparent" not in stored.metadata and carrier.received_ns == 0

    asyncio.run(main())
