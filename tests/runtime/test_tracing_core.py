"""Trace context in the entity core, Ray-free, with the OpenTelemetry SDK's in-memory exporter
(issue 28): a traced command's spans (command, queue wait, handler, journal append with its
attributes), the append span's context in every event's metadata, a timer fire continuing the
trace that scheduled it, a projection's handling linked (not parented) to the append, and
nothing at all when tracing is off. The same path through Ray, Serve and Cassandra:
tests/test_tracing_ray.py."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

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


def test_a_slow_traced_append_logs_its_trace_id_in_place_of_an_exemplar(
    exporter, monkeypatch, caplog
) -> None:
    """Ray's histograms take no exemplar: a traced append at least SLOW_APPEND_S long logs
    its append span's trace and span id (JSON fields), and a faster one logs nothing."""
    import json
    import logging

    from opentelemetry import trace

    from raysource.runtime.logs import JsonFormatter

    async def main():
        w = World()
        caplog.set_level(logging.WARNING, logger="raysource.runtime.tracing")
        monkeypatch.setattr(tracing, "SLOW_APPEND_S", 3600.0)
        with trace.get_tracer("test").start_as_current_span("caller"):
            carrier = tracing.current_carrier()
            await w.core("s3").handle(Keyed(HoldSeat("A1", "cy", 60), "k-3", carrier))
        assert [r for r in caplog.records if r.name == "raysource.runtime.tracing"] == []
        monkeypatch.setattr(tracing, "SLOW_APPEND_S", 0.0)
        exporter.clear()
        with trace.get_tracer("test").start_as_current_span("caller"):
            carrier = tracing.current_carrier()
            await w.core("s3").handle(Keyed(HoldSeat("A2", "cy", 60), "k-4", carrier))
        [append] = [s for s in exporter.get_finished_spans() if s.name.endswith(".append")]
        [record] = [r for r in caplog.records if r.name == "raysource.runtime.tracing"]
        line = json.loads(JsonFormatter().format(record))
        assert (line["trace_id"], line["span_id"]) == _ids(append)
        assert line["persistence_id"] == "show|s3" and line["sequence_nr"] == 2
        assert "slow journal append" in line["message"]

    asyncio.run(main())


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


@pytest.mark.cassandra
def test_on_cassandra_a_fire_after_a_restart_continues_its_schedulers_trace_from_its_row(
    exporter, cassandra_contact, cassandra_keyspace
) -> None:
    """The timer row (Cassandra's ``timer_index``) keeps the scheduling command's trace
    context: after a restart (new sessions, an activation restored from a snapshot, which
    keeps no trace), the fire is a child of the scheduler's append span, and the timer
    service's delivering call is a link of it (not its parent)."""
    from opentelemetry import trace
    from timer_attack_world import ALARM, Arm, Rang
    from timer_attack_world import World as AlarmWorld

    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.runtime.aggregate import SnapshotPolicy
    from raysource.runtime.timers import fire_key
    from raysource.snapshots.cassandra import CassandraSnapshotStore
    from raysource.testing.faults import FaultyJournal
    from raysource.timers.cassandra import CassandraTimerStore

    tracer = trace.get_tracer("test")
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    agg = dataclasses.replace(ALARM, snapshot=SnapshotPolicy(every_n_events=1))

    async def main():
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        w = AlarmWorld(agg, journal=journal, store=CassandraTimerStore(journal.session, cfg))
        w.snaps = CassandraSnapshotStore(journal.session, cfg)
        w.clock.now = datetime.now(UTC)
        exporter.clear()
        with tracer.start_as_current_span("scheduler") as scheduler:
            carrier = tracing.current_carrier()
            assert await w.core().handle(Keyed(Arm("o", (("t", 30),)), "k-1", carrier)) == "o"
        trace_id = f"{scheduler.get_span_context().trace_id:032x}"
        [append] = [s for s in exporter.get_finished_spans() if s.name.endswith(".append")]
        [armed] = await w.events()
        assert _tp(armed) == _ids(append) and _ids(append)[0] == trace_id
        assert w.core().stats.snapshots == 1
        await w.restart()
        await journal.close()

        # a restart: new sessions; the activation recovers from the snapshot (no trace kept)
        journal = await CassandraJournal.connect(cfg)
        try:
            w.journal = FaultyJournal(journal)
            w.store = CassandraTimerStore(journal.session, cfg)
            w.snaps = CassandraSnapshotStore(journal.session, cfg)
            core = w.core()
            recovered = await core.start()
            assert recovered.snapshot_sequence_nr == 1
            pending = core.timers.pending["t"]
            assert pending.trace == ""  # so the fire's context can only come from the row
            [row] = await w.store.due(agg.name, core.timers.shard, pending.bucket, pending.due_ms)
            assert row.traceparent == armed.metadata["traceparent"]

            deliveries = []

            async def send(type_name, pid, fires):  # a timer service whose process traces
                with tracer.start_as_current_span("timer service delivery") as delivery:
                    deliveries.append(delivery)
                    via = tracing.current_carrier()
                    return [await core.handle(Keyed(f, fire_key(f.timer_id), via)) for f in fires]

            exporter.clear()
            w.clock.now += timedelta(seconds=31)
            pump = w.pump()
            pump.send = send
            assert await pump.run_once() == 1
            await pump.drain()
            spans = {s.name: s for s in exporter.get_finished_spans()}
            fire = spans["raysource.timer.fire"]
            assert _ids(fire)[0] == trace_id
            assert fire.parent.span_id == append.context.span_id  # a child of the schedule
            [link] = fire.links  # the delivery: a link, not the parent
            assert _ids_of_link(link) == _ids(deliveries[0])
            rang = (await w.events())[1]
            assert w.ser.decode(rang.serializer_id, rang.manifest, rang.payload) == Rang("o", "t")
            assert _tp(rang) == _ids(spans["raysource.journal.append"])
            assert _tp(rang)[0] == trace_id  # the fire's event is in the scheduler's trace
            await w.restart()  # its snapshot written before the session closes
        finally:
            await journal.close()

    asyncio.run(main())


@pytest.mark.cassandra
def test_an_older_timer_index_without_trace_columns_works_and_is_upgraded(
    cassandra_contact, cassandra_keyspace
) -> None:
    """A keyspace made before the trace columns: the store writes and reads rows without
    trace context, ``raysource doctor``'s schema line names the columns, and
    ``create_schema`` (``raysource schema migrate``) adds them."""
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.schema import missing_columns
    from raysource.journal.cassandra.session import CassandraSession
    from raysource.ops.doctor import _schema
    from raysource.timers.api import TimerRow
    from raysource.timers.cassandra import CassandraTimerStore

    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    row = TimerRow("t", 0, 5, 300_000, "t|a", "n", "n@1", tp, "")

    async def main():
        session = await CassandraSession.open(cfg, create_schema=True)
        try:
            for column in ("traceparent", "tracestate"):
                await session.execute(
                    f"ALTER TABLE {cfg.keyspace}.timer_index DROP {column}", prepare=False
                )
            missing = [(t, c) for t, c, _ in await missing_columns(session, cfg)]
            assert missing == [("timer_index", "traceparent"), ("timer_index", "tracestate")]
            ok, detail = await _schema(cfg, session)
            assert not ok and "timer_index.traceparent" in detail, detail
            old = CassandraTimerStore(session, cfg)
            await old.upsert([row])
            assert await old.due("t", 0, 5, 300_000) == [dataclasses.replace(row, traceparent="")]

            from raysource.journal.cassandra.schema import create_schema

            await create_schema(session, cfg, keyspace=False)
            assert await missing_columns(session, cfg) == []
            assert (await _schema(cfg, session))[0]
            new = CassandraTimerStore(session, cfg)
            await new.upsert([row])
            assert await new.due("t", 0, 5, 300_000) == [row]
        finally:
            await session.close()

    asyncio.run(main())
