"""The service API on real Ray Serve, called over real HTTP (httpx), journaling to the real
Cassandra: every endpoint of the seat service, the typed error -> HTTP status table, the OpenAPI
document, two replicas serving the same aggregates with no double write, and a replica killed
under load with nothing acknowledged lost. Every claim is checked against the journal.

One Serve instance per module (two applications: the seat service with two replicas, and a
"strict" one with an in-flight limit of 1 and a 1 ms ask timeout for the 429 and 504 paths).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import replace

import httpx
import pytest

from raysource.errors import (
    AggregateStoppedError,
    AskTimeoutError,
    CommandRejected,
    ConfigError,
    HandlerError,
    HostCrashedError,
    JournalOutcomeUnknownError,
    JournalUnavailableError,
    NoLiveNodesError,
    OverloadedError,
    PassivatedError,
    PayloadTooLargeError,
    PersistFailedError,
    UnknownAggregateTypeError,
    UnknownCommandError,
    UnserializableError,
    WriteOutcomeUnknownError,
)
from raysource.examples.seats import SHOW, SeatReserved
from raysource.service.errors import NotFoundError, ReplicaOverloadedError
from raysource.service.http_errors import STATUS_TABLE, http_error

# --------------------------------------------------------------------------- the table (no Ray)

CASES = [
    (CommandRejected("seat A1 is already reserved"), 409, "rejected"),
    (NotFoundError("seat A2 is not reserved"), 404, "not_found"),
    (UnknownAggregateTypeError("no type 'x'"), 404, "not_found"),  # a ConfigError, but 404
    (PayloadTooLargeError("too big"), 413, "too_large"),
    (UnserializableError("cannot encode"), 422, "bad_input"),
    (ConfigError("entity id must be a non-empty string"), 400, "bad_input"),
    (ReplicaOverloadedError("busy", retry_after_s=2.5), 429, "overloaded"),
    (OverloadedError("mailbox full"), 429, "overloaded"),  # the host's, not applied
    (HostCrashedError("died"), 504, "outcome_unknown"),
    (AskTimeoutError("slow"), 504, "outcome_unknown"),
    (WriteOutcomeUnknownError("unconfirmed"), 504, "outcome_unknown"),
    (JournalOutcomeUnknownError("sent"), 504, "outcome_unknown"),  # also JournalUnavailable
    (JournalUnavailableError("down"), 503, "unavailable"),
    (NoLiveNodesError("no node"), 503, "unavailable"),
    (PersistFailedError("not written"), 503, "unavailable"),
    (PassivatedError("retiring"), 503, "unavailable"),
    (AggregateStoppedError("fenced"), 503, "unavailable"),
    (HandlerError("bug"), 500, "internal"),  # not applied, but retrying cannot help
    (UnknownCommandError("no handler"), 500, "internal"),
]


@pytest.mark.parametrize("error,status,code", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_error_table_maps_each_error_to_its_status(error, status, code) -> None:
    got, body, headers = http_error(error, idempotency_key="k-1", retry_safe=False)
    assert (got, body["error"], body["type"]) == (status, code, type(error).__name__)
    if status in (429, 503):
        assert int(headers["Retry-After"]) >= 1 and body["category"] == "not_applied"
    else:
        assert "Retry-After" not in headers
    if status == 504:  # the key to re-send with, and whether re-sending it is safe
        assert body["idempotency_key"] == headers["Idempotency-Key"] == "k-1"
        assert body["retry_safe"] is False and body["category"] == "outcome_unknown"
    else:
        assert "idempotency_key" not in body
    if isinstance(error, ReplicaOverloadedError):
        assert headers["Retry-After"] == "3"  # the error's own delay, rounded up


def test_every_row_of_the_table_is_reachable() -> None:
    """No row is shadowed by an earlier, more general one (order matters: first match)."""
    reached = {type(e) for e, _, _ in CASES}
    for i, row in enumerate(STATUS_TABLE):
        for earlier in STATUS_TABLE[:i]:
            assert not issubclass(row.error, earlier.error), (row, earlier)
        assert any(issubclass(t, row.error) for t in reached) or row.error.__name__ in (
            "UnknownEntityError",
            "NotAppliedError",
            "RaysourceError",
        ), row


# --------------------------------------------------------------------------- the live service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, url: str, strict: str, config, system) -> None:
        self.url, self.strict, self.config, self.system = url, strict, config, system

    def events(self, show: str) -> list:
        """The decoded journal of ``show`` (read directly from Cassandra)."""
        from raysource.ops.inspect import event_log, open_readonly

        async def run() -> list:
            journal, _ = await open_readonly(self.config)
            try:
                return [e async for e in event_log(journal, None, SHOW, show)]
            finally:
                await journal.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def live(cassandra_contact, cassandra_keyspace, ray_local):
    from ray import serve

    from raysource.examples.reservations_view import reservations_projection
    from raysource.examples.seats_service import seats_app
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.readside.projection_actor import Projections
    from raysource.runtime.stores import StoreSpec
    from raysource.service.deployment import ServiceSpec, run_service
    from raysource.sharding.system import System, unique_system_name

    host, port = cassandra_contact
    config = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=0.5,
    )
    store = StoreSpec.for_cassandra(config, create_schema=True)
    name = unique_system_name("svc")
    namespace = ray_local.get_runtime_context().namespace
    system = System.start(name, store=store, types=[SHOW], namespace=namespace)
    spec = ServiceSpec(name, store, (SHOW,), namespace, ask_timeout_s=20.0)
    http_port = _free_port()
    control = Projections(config)
    projection = reservations_projection()
    try:
        url = run_service(
            seats_app(spec, num_replicas=2), name="seats", port=http_port, route_prefix="/seats"
        )
        strict = run_service(
            seats_app(replace(spec, max_in_flight=1, ask_timeout_s=0.001)),
            name="strict",
            port=http_port,
            route_prefix="/strict",
        )
        asyncio.run(control.start(projection))
        yield Live(url, strict, config, system)
    finally:
        try:
            asyncio.run(control.stop(projection.name))
        except Exception:  # noqa: BLE001 - teardown
            pass
        serve.shutdown()
        system.shutdown()


def _show() -> str:
    return f"show-{uuid.uuid4().hex[:8]}"


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(180)
def test_every_endpoint_of_the_seat_service(live: Live) -> None:
    show, other = _show(), _show()
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["system"] == live.system.name
        # create: 201 with the sized hall; a second create is the aggregate's 409
        r = http.put(f"/shows/{show}", json={"seats": 20})
        assert r.status_code == 201, r.text
        assert r.json() == {
            "show": show,
            "seats": 20,
            "created": True,
            "available": 20,
            "reservations": {},
        }
        r = http.put(f"/shows/{show}", json={"seats": 30})
        assert (r.status_code, r.json()["detail"]) == (409, "the show already exists")
        # reserve: 201, then the same seat for someone else is 409 (nothing written)
        r = http.post(f"/shows/{show}/reservations", json={"seat": "A1", "customer": alice})
        assert (r.status_code, r.json()) == (201, {"show": show, "seat": "A1", "customer": alice})
        r = http.post(f"/shows/{show}/reservations", json={"seat": "A1", "customer": "bob"})
        assert r.status_code == 409
        assert r.json()["error"] == "rejected" and r.json()["type"] == "CommandRejected"
        assert r.json()["detail"] == "seat A1 is already reserved"
        # a seat beyond this hall (20 seats: A1..B10) is the aggregate's refusal
        r = http.post(f"/shows/{show}/reservations", json={"seat": "C1", "customer": alice})
        assert (r.status_code, r.json()["detail"]) == (409, "seat C1 does not exist")
        # state and one seat
        r = http.get(f"/shows/{show}")
        assert r.status_code == 200
        assert r.json()["reservations"] == {"A1": alice} and r.json()["available"] == 19
        assert http.get(f"/shows/{show}/reservations/A1").json()["customer"] == alice
        r = http.get(f"/shows/{show}/reservations/A2")
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        # cancel: only the holder; then the seat is free again
        r = http.delete(f"/shows/{show}/reservations/A1", params={"customer": "bob"})
        assert (r.status_code, r.json()["detail"]) == (409, "seat A1 is not reserved by bob")
        r = http.delete(f"/shows/{show}/reservations/A1", params={"customer": alice})
        assert (r.status_code, r.json()) == (200, {"show": show, "seat": "A1", "customer": alice})
        assert http.get(f"/shows/{show}/reservations/A1").status_code == 404
        # the customer's reservations, from the read-side view (eventually consistent)
        for s, seat in ((show, "B2"), (other, "A3")):
            assert (
                http.post(
                    f"/shows/{s}/reservations", json={"seat": seat, "customer": alice}
                ).status_code
                == 201
            )
        expected = sorted(
            [{"show": show, "seat": "B2"}, {"show": other, "seat": "A3"}],
            key=lambda d: (d["show"], d["seat"]),
        )
        deadline = time.monotonic() + 30
        while True:
            r = http.get(f"/customers/{alice}/reservations")
            assert r.status_code == 200
            if r.json()["reservations"] == expected or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.json() == {"customer": alice, "reservations": expected}
    # the journal holds exactly what was acknowledged, in order
    assert [type(e.event).__name__ for e in live.events(show)] == [
        "ShowCreated",
        "SeatReserved",
        "ReservationCancelled",
        "SeatReserved",
    ]
    assert [e.event for e in live.events(other)] == [SeatReserved("A3", alice)]


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_the_serve_demo_walkthrough_passes_against_the_live_service(live: Live) -> None:
    """What ``raysource serve --demo`` prints and checks, against the running service."""
    from raysource.loadtest.serve import demo_walkthrough

    lines: list[str] = []
    assert demo_walkthrough(live.url, say=lines.append)
    text = "\n".join(lines)
    for status in ("-> 201", "-> 409", "-> 422", "-> 404", "-> 200"):
        assert status in text
    assert "expected" not in text.replace("as expected", "")
    assert lines[-1] == "demo: every endpoint answered as expected"


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_bad_input_is_a_typed_4xx_and_leaves_the_aggregate_intact(live: Live) -> None:
    show = _show()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert (
            http.post(
                f"/shows/{show}/reservations", json={"seat": "A1", "customer": "c"}
            ).status_code
            == 201
        )
        for body in (
            {"seat": "a1", "customer": "c"},
            {"seat": "A0", "customer": "c"},
            {"seat": "A11", "customer": "c"},
            {"seat": "A2", "customer": ""},
            {"seat": "A2"},
            {"seat": 7, "customer": "c"},
        ):
            r = http.post(f"/shows/{show}/reservations", json=body)
            assert r.status_code == 422, (body, r.text)
        assert (
            http.post(
                f"/shows/{show}/reservations",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ).status_code
            == 422
        )
        assert http.put(f"/shows/{show}", json={"seats": 0}).status_code == 422
        assert http.delete(f"/shows/{show}/reservations/A1").status_code == 422  # no customer
        assert http.get(f"/shows/{'x' * 600}").status_code == 422  # over the path's limit
        # an entity id the runtime refuses (a control character): its ConfigError is a 400
        r = http.get("/shows/bad%01id")
        assert (r.status_code, r.json()["error"], r.json()["type"]) == (
            400,
            "bad_input",
            "ConfigError",
        )
        assert "control characters" in r.json()["detail"]
        assert http.get("/no/such/route").status_code == 404
        assert http.get(f"/shows/{show}").json()["reservations"] == {"A1": "c"}
    assert [e.event for e in live.events(show)] == [SeatReserved("A1", "c")]


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_overload_is_429_and_an_unknown_outcome_is_504_with_the_key(live: Live) -> None:
    from raysource.service.deployment import refs_take_idempotency_keys

    show = _show()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.strict, timeout=60) as http:
            return await asyncio.gather(*[http.get(f"/shows/{show}") for _ in range(20)])

    answers = asyncio.run(burst())
    statuses = Counter(r.status_code for r in answers)
    assert statuses[429] >= 1 and set(statuses) <= {200, 429, 504}, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "overloaded" and refused.json()["category"] == "not_applied"
    # a 1 ms deadline: the command is sent, its outcome unknown, the key comes back
    with httpx.Client(base_url=live.strict, timeout=30) as http:
        r = http.post(
            f"/shows/{show}/reservations",
            json={"seat": "A5", "customer": "dora"},
            headers={"Idempotency-Key": "key-123"},
        )
        assert r.status_code == 504, r.text
        body = r.json()
        assert (body["error"], body["type"]) == ("outcome_unknown", "AskTimeoutError")
        assert body["idempotency_key"] == r.headers["Idempotency-Key"] == "key-123"
        assert body["retry_safe"] is refs_take_idempotency_keys()
        r = http.post(f"/shows/{show}/reservations", json={"seat": "A6", "customer": "dora"})
        assert r.status_code == 504 and len(r.json()["idempotency_key"]) == 32  # made up
    # outcome unknown means at most once: the seat is the customer's once, or free. No sleep:
    # a probe closes the window. Another customer reserves both seats through the normal path;
    # an unknown-outcome command that lands after the probe finds its seat taken and writes
    # nothing, so once the probes answered, the journal's answer for A5 and A6 is final.
    with httpx.Client(base_url=live.url, timeout=30) as http:
        probes = {
            seat: http.post(
                f"/shows/{show}/reservations", json={"seat": seat, "customer": "zed"}
            ).status_code
            for seat in ("A5", "A6")
        }
    reserved = Counter(e.event for e in live.events(show))
    for seat, status in probes.items():
        dora, zed = SeatReserved(seat, "dora"), SeatReserved(seat, "zed")
        assert status in (201, 409), probes
        # exactly one holder per seat: zed iff the probe was answered 201, else dora, once
        assert (reserved[dora], reserved[zed]) == ((0, 1) if status == 201 else (1, 0)), reserved
    assert sum(reserved.values()) == 2, reserved


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_re_sending_the_key_of_a_504_applies_the_command_once(live: Live) -> None:
    """The Idempotency-Key header becomes the command's key: a 504's key re-sent (to any
    replica) answers the command's one outcome, and a repeat never writes again."""
    from raysource.service.deployment import refs_take_idempotency_keys

    show, key = _show(), f"key-{uuid.uuid4().hex}"
    body = {"seat": "A7", "customer": "erin"}
    with httpx.Client(base_url=live.strict, timeout=30) as strict:
        first = strict.post(
            f"/shows/{show}/reservations", json=body, headers={"Idempotency-Key": key}
        )
    assert first.status_code == 504 and first.json()["idempotency_key"] == key
    retry_safe = first.json()["retry_safe"]
    assert retry_safe is refs_take_idempotency_keys()  # True once idempotent commands exist
    with httpx.Client(base_url=live.url, timeout=30) as http:
        answers = [
            http.post(f"/shows/{show}/reservations", json=body, headers={"Idempotency-Key": key})
            for _ in range(3)
        ]
    statuses = [a.status_code for a in answers]
    if retry_safe:  # the same key: the original outcome each time, applied once
        assert statuses == [201, 201, 201], [a.text for a in answers]
        assert all(a.json() == {"show": show, **body} for a in answers)
    else:  # without keys a re-send is a new command: the seat is then taken
        assert statuses[1:] == [409, 409] and statuses[0] in (201, 409)
    # No sleep needed: the seat is held once any attempt applied, so an unconfirmed first
    # attempt that lands later is refused by the aggregate itself (or answered from its key)
    # and writes nothing; the journal is final for A7 once these answers came back.
    assert [e.event for e in live.events(show)] == [SeatReserved("A7", "erin")]


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(60)
def test_openapi_document(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json", timeout=30).json()
    assert doc["info"]["title"] == "raysource seats"
    paths = doc["paths"]
    assert set(paths["/shows/{show}"]) == {"get", "put"}
    assert set(paths["/shows/{show}/reservations"]) == {"post"}
    assert set(paths["/shows/{show}/reservations/{seat}"]) == {"get", "delete"}
    assert set(paths["/customers/{customer}/reservations"]) == {"get"}
    reserve = paths["/shows/{show}/reservations"]["post"]
    assert {"201", "409", "422", "429", "503", "504"} <= set(reserve["responses"])
    assert (
        reserve["responses"]["409"]["content"]["application/json"]["schema"]["$ref"]
        == "#/components/schemas/Problem"
    )
    headers = [p["name"] for p in reserve["parameters"] if p["in"] == "header"]
    assert headers == ["Idempotency-Key"]
    assert doc["components"]["schemas"]["NewReservation"]["properties"]["seat"]["pattern"]
    ui = httpx.get(f"{live.url}/docs", timeout=30)
    assert ui.status_code == 200 and "swagger" in ui.text.lower()


# --------------------------------------------------------------------------- the load test


def test_http_mode_needs_the_seat_workload_and_a_replica(capsys) -> None:
    from raysource.cli.main import main
    from raysource.loadtest.driver import LoadTestParams

    with pytest.raises(ConfigError, match="seat service"):
        LoadTestParams(workload="ledger", via="http")
    with pytest.raises(ConfigError, match="replicas"):
        LoadTestParams(via="http", replicas=0)
    assert main(["loadtest", "--via", "http", "--workload", "ledger"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "use --workload seats" in err


def test_serve_on_a_taken_port_is_one_line_before_anything_starts(capsys, monkeypatch) -> None:
    from raysource.cli.main import main
    from raysource.devnode import select

    started: list[str] = []  # "before anything starts": no Cassandra node is even selected
    monkeypatch.setattr(select, "select_cassandra", lambda *a, **k: started.append("node"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(["serve", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and started == []
    assert err.count("\n") == 0 and err.startswith("raysource: error: cannot serve on")


def test_serve_usage_errors_are_one_line(capsys) -> None:
    from raysource.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "70000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--port" in err


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_loadtest_over_http_reports_the_same_figures_beside_refs(
    live, cassandra_contact, cassandra_keyspace, tmp_path
) -> None:
    from raysource.loadtest.driver import LoadTestParams, run_loadtest
    from raysource.loadtest.standalone import comparison_lines

    host, port = cassandra_contact
    reports = {}
    for via in ("refs", "http"):  # the http run deploys its app on the module's Serve
        params = LoadTestParams(
            workload="seats",
            entities=20,
            clients=1,
            commands=200,
            duration_s=None,
            shards=4,
            keyspace=cassandra_keyspace,
            via=via,
            results_dir=str(tmp_path),
            sample=5,
        )
        reports[via] = run_loadtest(params, f"{host}:{port}", progress=False)
    for via, report in reports.items():
        f = report.result["figures"]
        assert report.result["parameters"]["via"] == via
        assert f["sent"] == 200 and f["errors"] == 0, report.result.get("clients")
        assert f["accepted"] + f["rejected"] == 200 and f["accepted"] > 0
        assert f["by_kind"]["query"]["count"] > 0 and f["by_kind"]["reserve"]["count"] > 0
        # what the clients were told (HTTP 201/200 vs 409) is what the journal replays to
        assert report.consistency.ok, report.consistency.problems
        assert not report.leftover_actors
        assert report.png_path.exists()
    lines = comparison_lines(reports)
    assert lines[1].startswith("refs") and lines[2].startswith("http")
    assert lines[3].startswith("HTTP / refs: throughput x")
    print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- replicas


def _reserve_all(
    url: str, requests: list[tuple[str, str, str]], concurrency: int, out: list | None = None
) -> list[tuple[tuple[str, str, str], int | str, str, float]]:
    """Send every (show, seat, customer) reservation with ``concurrency`` in flight; returns
    (request, status or exception name, replica, monotonic time of the answer) per request."""
    out = [] if out is None else out

    async def run() -> None:
        queue = list(reversed(requests))
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

            async def worker() -> None:
                while queue:
                    req = queue.pop()
                    show, seat, customer = req
                    try:
                        r = await http.post(
                            f"/shows/{show}/reservations", json={"seat": seat, "customer": customer}
                        )
                        out.append(
                            (
                                req,
                                r.status_code,
                                r.headers.get("x-raysource-replica", ""),
                                time.monotonic(),
                            )
                        )
                    except httpx.HTTPError as exc:
                        out.append((req, type(exc).__name__, "", time.monotonic()))

            await asyncio.gather(*[worker() for _ in range(concurrency)])

    asyncio.run(run())
    return out


def _scrape(port: int) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    # the metrics agent of a Ray that was restarted (cluster tests restore the session's Ray)
    # listens again a moment after the restart
    for attempt in range(60):
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            break
        except httpx.ConnectError:
            if attempt == 59:
                raise
            time.sleep(1)
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(300)
def test_prometheus_scrape_finds_raysource_series_after_a_load(
    live: Live, ray_metrics_port: int
) -> None:
    """A load through the service, then the session Ray's Prometheus endpoint (its metrics
    agent, scraped for real over HTTP) has raysource's series with their declared labels and
    values that count the load (issue 28)."""
    from raysource.runtime.metrics import METRICS

    url, port = live.url, ray_metrics_port

    def accepted_now() -> float:
        return sum(
            s.value
            for s in _scrape(port)
            if s.name == "ray_raysource_commands_total"
            and s.labels.get("type") == "show"
            and s.labels.get("outcome") == "accepted"
        )

    # the session's Ray has counted the earlier tests' commands: the baseline is the count
    # once it stopped moving for longer than the workers' report interval (so what arrives
    # after the load is the load's)
    import ray

    quiet_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000 + 2
    until, seen, since = time.monotonic() + 120, None, time.monotonic()
    while time.monotonic() < until:
        now = accepted_now()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(1)
    baseline = seen or 0.0
    shows = [f"load-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    with httpx.Client(base_url=url, timeout=60) as http:
        for show in shows:
            assert http.put(f"/shows/{show}", json={"seats": 20}).status_code == 201
            for seat in ("A1", "A2", "A3", "A4"):
                r = http.post(f"/shows/{show}/reservations", json={"seat": seat, "customer": "x"})
                assert r.status_code == 201, r.text
    wanted = {
        "ray_raysource_commands_total": {"type": "show", "outcome": "accepted"},
        "ray_raysource_journal_writes_total": {"type": "show"},
        "ray_raysource_events_persisted_total": {"type": "show"},
        "ray_raysource_persist_latency_seconds_count": {"type": "show"},
        "ray_raysource_persist_latency_seconds_bucket": {"type": "show", "le": "+Inf"},
        "ray_raysource_active_aggregates": {"type": "show"},
    }

    def found(samples) -> dict[str, object]:
        out = {}
        for name, labels in wanted.items():
            hits = [
                s
                for s in samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            ]
            if hits:
                out[name] = hits
        return out

    until, got = time.monotonic() + 150, {}
    while time.monotonic() < until:
        got = found(_scrape(port))
        accepted = sum(s.value for s in got.get("ray_raysource_commands_total", ()))
        if set(got) == set(wanted) and accepted >= baseline + 25:
            break
        time.sleep(2)
    assert set(got) == set(wanted), sorted(set(wanted) - set(got))
    # the load's 25 accepted commands (5 creates + 20 reservations) on top of the baseline
    assert sum(s.value for s in got["ray_raysource_commands_total"]) >= baseline + 25
    for name, samples in got.items():
        base = name.removeprefix("ray_")
        for suffix in ("_bucket", "_count", "_sum"):
            base = base.removesuffix(suffix)
        declared = set(METRICS[base].labels)
        for s in samples:  # the declared labels, plus Ray's own (node, component, ...)
            assert declared <= set(s.labels), (name, s.labels)
    hosts = {s.labels["host"] for s in got["ray_raysource_active_aggregates"]}
    assert hosts and all(h for h in hosts)


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(180)
def test_two_replicas_serve_the_same_aggregates_without_double_writes(live: Live) -> None:
    shows = [_show() for _ in range(3)]
    seats = [f"A{i}" for i in range(1, 11)]
    # every seat wanted by four customers at once, through both replicas
    requests = [(s, seat, f"c{k}") for s in shows for seat in seats for k in range(4)]
    answers = _reserve_all(live.url, requests, concurrency=16)
    assert len(answers) == len(requests)
    assert {status for _, status, _, _ in answers} <= {201, 409}, Counter(a[1] for a in answers)
    replicas_per_show = defaultdict(set)
    winners: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (show, seat, customer), status, replica, _ in answers:
        replicas_per_show[show].add(replica)
        if status == 201:
            winners[(show, seat)].append(customer)
    assert all(len(r) == 2 for r in replicas_per_show.values()), replicas_per_show
    assert all(len(w) == 1 for w in winners.values()) and len(winners) == 30
    for show in shows:  # the journal: one SeatReserved per seat, by the one acknowledged
        events = live.events(show)
        assert [e.sequence_nr for e in events] == list(range(1, 11))
        assert {(e.event.seat, e.event.customer) for e in events} == {
            (seat, winners[(show, seat)][0]) for seat in seats
        }


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_replica_killed_under_load_loses_nothing_acknowledged(live: Live) -> None:
    import threading

    import ray
    from ray import serve

    shows = [_show() for _ in range(4)]
    requests = [
        (s, f"{row}{n}", f"cust-{s[-4:]}-{row}{n}")
        for s in shows
        for row in "ABCDEFGHIJ"
        for n in range(1, 11)
    ]  # 400 distinct seats
    victims: list[str] = []
    killed_at: list[float] = []

    answers: list = []

    def kill_one_replica() -> None:
        deadline = time.monotonic() + 60
        while len(answers) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == "serve" and entry["name"].startswith("SERVE_REPLICA::seats#"):
                victims.append(entry["name"])
                ray.kill(ray.get_actor(entry["name"], namespace="serve"), no_restart=True)
                killed_at.append(time.monotonic())
                return

    killer = threading.Thread(target=kill_one_replica)
    killer.start()
    _reserve_all(live.url, requests, concurrency=12, out=answers)
    killer.join()
    assert victims, "no replica was found to kill"
    before = sum(1 for *_, t in answers if t < killed_at[0])
    assert 0 < before < len(answers) - 50, (before, len(answers))  # killed under load
    outcomes = Counter(status for _, status, _, _ in answers)
    assert outcomes[201] > 0 and set(outcomes) <= {
        201,
        500,
        502,
        503,
        504,
        "ReadError",
        "RemoteProtocolError",
    }, outcomes
    # Serve replaces the killed replica; the service answers from two replicas again
    deadline = time.monotonic() + 60
    while True:
        status = serve.status().applications["seats"].deployments["seats"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    seen: set[str] = set()  # the proxy learns of the new replica shortly after it runs
    while len(seen) < 2 and time.monotonic() < deadline + 30:
        seen.add(httpx.get(f"{live.url}/healthz", timeout=30).headers["x-raysource-replica"])
    assert len(seen) == 2 and victims[0].rsplit("#", 1)[-1] not in seen, seen
    # against the journal: every acknowledged reservation stored exactly once; anything stored
    # but unacknowledged was a failed (outcome unknown) request, never a refused one
    acked = {req for req, status, _, _ in answers if status == 201}
    failed = {req for req, status, _, _ in answers if status != 201}
    stored: Counter = Counter()
    for show in shows:
        events = live.events(show)
        assert [e.sequence_nr for e in events] == list(range(1, len(events) + 1))
        stored.update((show, e.event.seat, e.event.customer) for e in events)
    assert all(stored[req] == 1 for req in acked), [r for r in acked if stored[r] != 1]
    assert set(stored) - acked <= failed and max(stored.values()) == 1
    print(
        f"\nreplica kill under load ({before} answered before it): {dict(outcomes)}; "
        f"stored {len(stored)}, "
        f"acknowledged {len(acked)}, stored but unacknowledged {len(set(stored) - acked)}"
    )
