"""Trace context end to end on real Ray, real Ray Serve and the real Cassandra (issue 28).

One HTTP request with a W3C ``traceparent`` header through the seat service yields one trace:
the request's span, the reference's, the host's command span with its queue wait and handler,
the journal append; the stored events carry the append span's context in their metadata; the
projection handles the event in a span of its own trace *linked* to the append span, and
again (the same link) after the projection was reset and replayed the journal.

Spans end in many processes (Serve replica, host actor, projection worker): each exports them
to one sink actor (``raysource.testing.span_sink``), installed in every worker by Ray's
``worker_process_setup_hook``. That hook is a job-level option of ``ray.init``: on the
session's Ray it would put an SDK tracer provider into every worker of every later Ray test
(their events stamped, their spans exported), so this module has a Ray of its own; conftest
runs it before the session's Ray starts (nothing to shut down and start again). The Prometheus
scrape test runs on the session's Ray and the service's Serve app: tests/service/test_service.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import httpx
import pytest
import session_ray

from raysource.examples.seats import SHOW

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def traced(cassandra_contact, cassandra_keyspace):
    import ray
    from ray import serve

    from raysource.examples.reservations_view import reservations_projection
    from raysource.examples.seats_service import seats_app
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.readside.projection_actor import Projections
    from raysource.runtime.stores import StoreSpec
    from raysource.service.deployment import ServiceSpec, run_service
    from raysource.sharding.system import System, unique_system_name
    from raysource.testing.span_sink import install_forwarding, start_sink

    restore_ns = None
    if ray.is_initialized():
        restore_ns = ray.get_runtime_context().namespace
        ray.shutdown()
    ns = f"raysource-tracing-{uuid.uuid4().hex[:6]}"
    session_ray.init_local(ns, runtime_env={"worker_process_setup_hook": install_forwarding})
    system = None
    try:  # whatever fails after ray.init, this module's Ray never outlives it
        host, port = cassandra_contact
        config = CassandraConfig(
            contact_points=(host,),
            port=port,
            keyspace=cassandra_keyspace,
            eventual_consistency_delay=0.5,
        )
        store = StoreSpec.for_cassandra(config, create_schema=True)
        sink = start_sink()
        system = System.start(unique_system_name("trc"), store=store, types=[SHOW], namespace=ns)
        spec = ServiceSpec(system.name, store, (SHOW,), ns, ask_timeout_s=30.0)
        control = Projections(config)
        projection = reservations_projection(name=f"trc-{uuid.uuid4().hex[:6]}")
        try:
            url = run_service(
                seats_app(spec), name="seats", port=_free_port(), route_prefix="/seats"
            )
            asyncio.run(control.start(projection))
            yield url, sink, control, projection
        finally:
            try:
                asyncio.run(control.stop(projection.name))
            except Exception:  # noqa: BLE001 - teardown
                pass
            serve.shutdown()
    finally:
        if system is not None:
            system.shutdown()
        ray.shutdown()
        if restore_ns is not None:  # the session's Ray was up: as it was (conftest.ray_local)
            session_ray.start(restore_ns)


def _hex(v: str | None) -> str:
    return (v or "").removeprefix("0x")


def _wait_spans(sink, done, timeout: float = 90.0) -> list[dict]:
    import ray

    until = time.monotonic() + timeout
    while True:
        spans = ray.get(sink.spans.remote())
        if done(spans) or time.monotonic() > until:
            return spans
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_one_http_request_is_one_trace_from_the_request_to_the_projection(
    traced, cassandra_admin, cassandra_keyspace
) -> None:
    import ray

    url, sink, control, projection = traced
    show, customer = f"show-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:6]}"
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.put(f"/shows/{show}", json={"seats": 10}).status_code == 201
        r = http.post(
            f"/shows/{show}/reservations",
            json={"seat": "A1", "customer": customer},
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01", "tracestate": "k=v"},
        )
        assert r.status_code == 201, r.text

    def ours(spans):
        return [s for s in spans if _hex(s["context"]["trace_id"]) == trace_id]

    def appended(spans):
        return [s for s in ours(spans) if s["name"] == "raysource.journal.append"]

    def handled(spans, append_id):
        return [
            s
            for s in spans
            if s["name"] == "raysource.projection.handle"
            and any(_hex(link["context"]["span_id"]) == append_id for link in s["links"])
        ]

    def complete(sp):
        names = {s["name"] for s in ours(sp)}
        return (
            "HTTP POST /seats/shows/{show}/reservations".replace("{show}", show) in names
            and appended(sp)
            and handled(sp, _hex(appended(sp)[0]["context"]["span_id"]))
        )

    spans = _wait_spans(sink, complete)
    mine = ours(spans)
    by_name = {s["name"]: s for s in mine}
    assert {
        "raysource.ask",
        "raysource.command",
        "raysource.command.queue",
        "raysource.command.handler",
        "raysource.journal.append",
    } <= set(by_name), sorted(by_name)
    http_span = next(s for s in mine if s["name"].startswith("HTTP POST"))
    ids = {s["name"]: _hex(s["context"]["span_id"]) for s in mine}
    parent = {_hex(s["context"]["span_id"]): _hex(s["parent_id"]) for s in mine}

    def ancestors(span_id: str) -> list[str]:
        out = []
        while span_id in parent:
            span_id = parent[span_id]
            out.append(span_id)
        return out

    # the chain: caller -> HTTP request -> (the web framework's spans) -> ask -> command
    # -> (queue, handler, append)
    assert _hex(http_span["parent_id"]) == caller_span
    assert _hex(http_span["context"]["span_id"]) in ancestors(ids["raysource.ask"])
    assert _hex(by_name["raysource.command"]["parent_id"]) == ids["raysource.ask"]
    for child in ("raysource.command.queue", "raysource.command.handler"):
        assert _hex(by_name[child]["parent_id"]) == ids["raysource.command"]
    append = by_name["raysource.journal.append"]
    assert _hex(append["parent_id"]) == ids["raysource.command"]
    attrs = append["attributes"]
    assert attrs["raysource.persistence_id"] == SHOW.persistence_id(show)
    assert attrs["raysource.guard"] == "epoch" and attrs["raysource.group_size"] >= 1
    assert attrs["raysource.sequence_nr.first"] <= 2 <= attrs["raysource.sequence_nr.last"]
    # the stored event carries the append span's context (and the caller's tracestate)
    rows = cassandra_admin.execute(
        f"SELECT sequence_nr, meta FROM {cassandra_keyspace}.messages_v2 "
        "WHERE persistence_id = %s AND partition_nr = 0",
        (SHOW.persistence_id(show),),
    )
    meta = {r.sequence_nr: dict(r.meta or {}) for r in rows}
    assert meta[2]["traceparent"].split("-")[1:3] == [trace_id, ids["raysource.journal.append"]]
    assert meta[2]["tracestate"] == "k=v"
    # the create came without a traceparent: its request started a trace of its own
    assert meta[1]["traceparent"].split("-")[1] not in (trace_id, "0" * 32)
    # the projection's handling: its own trace, linked to the append (not a child)
    [handle] = handled(spans, ids["raysource.journal.append"])
    assert _hex(handle["context"]["trace_id"]) != trace_id and handle["parent_id"] is None
    assert handle["attributes"]["raysource.projection"] == projection.name
    # replayed: reset to the start, the same event is handled again, linked to the same append
    ray.get(sink.clear.remote())
    asyncio.run(control.reset(projection, None))
    spans = _wait_spans(sink, lambda sp: handled(sp, ids["raysource.journal.append"]))
    [again] = handled(spans, ids["raysource.journal.append"])
    assert _hex(again["context"]["trace_id"]) not in (trace_id, _hex(handle["context"]["trace_id"]))
