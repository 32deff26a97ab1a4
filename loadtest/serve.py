"""``raysource serve``: the example seat service (:mod:`raysource.examples.seats_service`) on
Ray Serve, with its system, its read-side projection and a Cassandra, from one command.

    raysource serve [--port 8000] [--replicas 2] [--cassandra H:P] [--seconds S] [--demo]

Selects Cassandra as the demo does (``--cassandra``, ``$RAYSOURCE_CASSANDRA``, a running local
node, Docker, else a node started from the Maven jars), starts local Ray (or joins
``--address``), starts the system and the reservations-by-customer projection, deploys the
service and prints its URL and OpenAPI page. It then serves until Ctrl-C (or ``--seconds``).
``--demo`` walks through every endpoint with a real HTTP client, printing each request and
answer, and exits (non-zero if an answer was not the expected one). Whatever happens, it
stops what it started: Serve, the projection, the system, Ray, a Cassandra node.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec

__all__ = ["demo_walkthrough", "run_serve"]

Say = Callable[[str], None]


def run_serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    contact: str | None = None,
    keyspace: str = "raysource",
    system: str = "seats",
    address: str | None = None,
    namespace: str = "raysource",
    seconds: float | None = None,
    demo: bool = False,
    keep: bool = False,
    say: Say = print,
) -> int:
    """See the module docstring; returns the exit code."""
    import ray
    from ray import serve

    from raysource.devnode.select import select_cassandra
    from raysource.examples.reservations_view import reservations_projection
    from raysource.examples.seats import SHOW
    from raysource.examples.seats_service import seats_app
    from raysource.readside.projection_actor import Projections
    from raysource.runtime.actors.cluster import connect_ray
    from raysource.service.deployment import ServiceSpec, run_service
    from raysource.sharding.system import System

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _check_free(host, port)  # before anything starts: a taken port is a one-line error
    source = select_cassandra(contact, stop_started_node=not keep, say=say)
    started_ray = not ray.is_initialized()
    sys_ = control = None
    projection = reservations_projection()
    try:
        connect_ray(address, namespace, **({"include_dashboard": False} if address is None else {}))
        config = CassandraConfig.from_env(
            source.contact_point, keyspace=keyspace, eventual_consistency_delay=1.0
        )
        store = StoreSpec.for_cassandra(config, create_schema=True)
        t0 = time.perf_counter()
        sys_ = System.start(system, store=store, types=[SHOW], namespace=namespace)
        control = Projections(config)
        asyncio.run(control.start(projection))
        spec = ServiceSpec(system, store, (SHOW,), namespace)
        url = run_service(
            seats_app(spec, num_replicas=replicas), name="seats", host=host, port=port
        )
        say(
            f"seat service: {replicas} replica(s) of system {system!r} (keyspace {keyspace}) "
            f"at {url}, up in {time.perf_counter() - t0:.1f} s"
        )
        say(f"  OpenAPI: {url}/docs   ({url}/openapi.json)")
        say(
            f"  try: curl -X POST {url}/shows/hamlet/reservations -H 'content-type: "
            'application/json\' -d \'{"seat": "A1", "customer": "alice"}\''
        )
        ok = True
        if demo:
            ok = demo_walkthrough(url, say=say)
        if seconds is not None or not demo:
            say("serving" + (f" for {seconds:g} s" if seconds is not None else " until Ctrl-C"))
            deadline = time.monotonic() + (seconds if seconds is not None else float("inf"))
            try:
                while time.monotonic() < deadline:
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            except KeyboardInterrupt:
                say("stopping")
        return 0 if ok else 1
    finally:
        try:  # on a cluster it joined, only its own app goes (Serve may run others)
            serve.shutdown() if started_ray else serve.delete("seats")
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        if control is not None:
            try:
                asyncio.run(control.stop(projection.name))
            except Exception:  # noqa: BLE001
                pass
        if sys_ is not None:
            sys_.shutdown()
        if started_ray and ray.is_initialized():  # a Ray it started or joined itself
            ray.shutdown()
        source.release()


def _check_free(host: str, port: int) -> None:
    import socket

    from raysource.errors import ConfigError

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (another "
                "process holds it; pick one with --port)"
            ) from None


def demo_walkthrough(url: str, *, say: Say = print, view_wait_s: float = 30.0) -> bool:
    """Call every endpoint once (a fresh show), printing request and answer; True if each
    answered the expected status."""
    import httpx

    show = f"demo-{uuid.uuid4().hex[:6]}"
    customer = f"alice-{uuid.uuid4().hex[:4]}"
    steps: list[tuple[str, str, dict[str, Any] | None, dict[str, str] | None, int]] = [
        ("PUT", f"/shows/{show}", {"seats": 20}, None, 201),
        ("POST", f"/shows/{show}/reservations", {"seat": "A1", "customer": customer}, None, 201),
        ("POST", f"/shows/{show}/reservations", {"seat": "A1", "customer": "bob"}, None, 409),
        ("POST", f"/shows/{show}/reservations", {"seat": "Z0", "customer": "bob"}, None, 422),
        ("POST", f"/shows/{show}/reservations", {"seat": "B2", "customer": customer}, None, 201),
        ("GET", f"/shows/{show}", None, None, 200),
        ("GET", f"/shows/{show}/reservations/A2", None, None, 404),
        ("DELETE", f"/shows/{show}/reservations/A1", None, {"customer": customer}, 200),
    ]
    ok = True
    with httpx.Client(base_url=url, timeout=30) as http:
        for method, path, body, query, expected in steps:
            answer = http.request(method, path, json=body, params=query)
            ok &= _show(say, method, path, body, query, answer, expected)
        deadline = time.monotonic() + view_wait_s  # the view follows the journal's tag stream
        while True:
            answer = http.get(f"/customers/{customer}/reservations")
            if (
                answer.json().get("reservations") == [{"show": show, "seat": "B2"}]
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.5)
        ok &= _show(say, "GET", f"/customers/{customer}/reservations", None, None, answer, 200)
        ok &= answer.json().get("reservations") == [{"show": show, "seat": "B2"}]
    say("demo: every endpoint answered as expected" if ok else "demo: UNEXPECTED ANSWERS")
    return ok


def _show(
    say: Say, method: str, path: str, body: Any, query: Any, answer: Any, expected: int
) -> bool:
    sent = f" {body}" if body is not None else ""
    q = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    mark = "" if answer.status_code == expected else f"  (expected {expected})"
    say(f"  {method} {path}{q}{sent}\n    -> {answer.status_code} {answer.text[:300]}{mark}")
    return answer.status_code == expected
