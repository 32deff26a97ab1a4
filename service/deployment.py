"""A raysource service on Ray Serve: replicas that hold a :class:`System` and answer HTTP.

    spec = ServiceSpec("shop", StoreSpec.for_cassandra(config), (SHOW,), namespace="shop")
    app = service_deployment(spec, build_seats_api, num_replicas=2)   # a Serve Application
    url = run_service(app, name="seats", port=8000)                    # Serve on this cluster

(``build_seats_api``: the example seat service, :mod:`raysource.examples.seats_service`.)

Each replica runs :class:`ServiceContext`: it joins the system by name (``System.start`` is
get-or-create, so every replica, driver and load client talks to the same coordinator and
the same single-writer aggregates), keeps one :class:`~raysource.runtime.actors.refs.EntityRef`
per aggregate it was asked about (one caller per replica and aggregate: its commands keep their
arrival order), and answers with the reply or the typed error mapped by
:mod:`raysource.service.http_errors`.

Contract of :meth:`ServiceContext.ask` (what an HTTP answer promises):

* 2xx: the command's events are durable (the reference's reply);
* 409/4xx: nothing was written; 429/503: not applied, safe to re-send after ``Retry-After``;
* 504: outcome unknown; the answer carries the request's ``Idempotency-Key`` (the client's,
  else one the replica made). If the references accept ``ask_async(cmd,
  idempotency_key=...)`` (idempotent commands), the key is passed through and ``retry_safe``
  is true: re-sending the same key returns the original reply instead of applying it twice.
  Until then ``retry_safe`` is false: read the state before re-sending.

A replica resolves an aggregate's host (a blocking round trip to the coordinator and region)
in a thread, never on its event loop; commands themselves are awaited on the loop
(``ask_async``). A reference that must re-resolve *inside* a retry (its host passivated or
crashed mid-call) resolves in a thread too, its re-sends queued behind that resolve in the
order they asked (``EntityRef._submit_in_turn``); a host crash also drops the reference, so
the next request resolves afresh.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from ray import serve

from raysource.errors import ConfigError, HostCrashedError, RaysourceError
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime import tracing
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.stores import StoreSpec
from raysource.service.errors import ReplicaOverloadedError
from raysource.service.http_errors import http_error
from raysource.sharding.system import System

__all__ = [
    "IDEMPOTENCY_HEADER",
    "REPLICA_HEADER",
    "ServiceContext",
    "ServiceSpec",
    "idempotency_key",
    "refs_take_idempotency_keys",
    "run_service",
    "service_deployment",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLICA_HEADER = "X-Raysource-Replica"
_MAX_REFS = 100_000


def refs_take_idempotency_keys() -> bool:
    """Whether :meth:`EntityRef.ask_async` accepts ``idempotency_key=`` (idempotent
    commands); the service passes the request's key through only then."""
    return "idempotency_key" in inspect.signature(EntityRef.ask_async).parameters


def _keys_on(aggregate_type: AggregateType) -> bool:
    """Whether commands of this type are applied at most once per key (the type's
    idempotency policy; a ref refuses a key for a type with keys off)."""
    policy = getattr(aggregate_type, "idempotency", None)
    return bool(policy is not None and policy.enabled)


@dataclass(frozen=True)
class ServiceSpec:
    """What every replica joins (picklable): the system ``system`` in Ray ``namespace`` with
    its ``store`` and ``types`` (placement and host settings as for ``System.start``).

    ``ask_timeout_s``: a command without a reply by then answers 504 (outcome unknown).
    ``max_in_flight``: commands and queries a replica admits at once; beyond, 429.
    ``view``: the Cassandra config of the read-side views (default: the store's)."""

    system: str
    store: StoreSpec
    types: tuple[AggregateType, ...]
    namespace: str
    placement: Mapping[str, str] = field(default_factory=dict)
    host_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ask_timeout_s: float = 10.0
    max_in_flight: int = 1024
    view: CassandraConfig | None = None

    def __post_init__(self) -> None:
        if not self.types:
            raise ConfigError("a service needs at least one aggregate type")
        if not self.ask_timeout_s > 0:
            raise ConfigError(f"ask_timeout_s must be > 0, got {self.ask_timeout_s}")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight}")

    @property
    def view_config(self) -> CassandraConfig | None:
        return self.view or self.store.cassandra


class ServiceContext:
    """One replica's half of the service (see the module docstring)."""

    def __init__(self, spec: ServiceSpec, replica: str = "local") -> None:
        self.spec = spec
        self.replica = replica
        self.system = System.start(
            spec.system,
            store=spec.store,
            types=spec.types,
            namespace=spec.namespace,
            placement=dict(spec.placement),
            host_settings=dict(spec.host_settings),
        )
        # a 504's key is safe to re-send only if refs take keys and every type applies them
        self._pass_keys = refs_take_idempotency_keys()
        self.retry_safe = self._pass_keys and all(_keys_on(t) for t in spec.types)
        self._refs: OrderedDict[tuple[str, str], EntityRef] = OrderedDict()
        self._resolving: dict[tuple[str, str], asyncio.Task] = {}
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="raysource-resolve")
        self._in_flight = 0
        self._session: Any = None
        self._session_lock = asyncio.Lock()

    # ------------------------------------------------------------------ references

    async def ref(self, aggregate_type: AggregateType | str, entity_id: str) -> EntityRef:
        """This replica's reference to ``(type, entity_id)``, its host resolved (in a
        thread). An invalid type or id raises ``ConfigError`` (400)."""
        ref = self.system.entity(aggregate_type, entity_id)  # validates (ConfigError)
        key = (ref.aggregate_type.name, entity_id)
        cached = self._refs.get(key)
        if cached is not None:
            self._refs.move_to_end(key)
            return cached
        resolving = self._resolving.get(key)
        if resolving is None:  # one resolve per aggregate, however many requests wait for it
            resolving = asyncio.ensure_future(self._resolve(key, ref))
            self._resolving[key] = resolving
        # shielded: a request that goes away does not cancel the others' resolve
        return await asyncio.shield(resolving)

    async def _resolve(self, key: tuple[str, str], ref: EntityRef) -> EntityRef:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, lambda: ref.actor)
            self._refs[key] = ref
            while len(self._refs) > _MAX_REFS:
                self._refs.popitem(last=False)
            return ref
        finally:
            self._resolving.pop(key, None)

    def _forget(self, ref: EntityRef) -> None:
        key = (ref.aggregate_type.name, ref.entity_id)
        if self._refs.get(key) is ref:
            del self._refs[key]

    def _admit(self) -> None:
        if self._in_flight >= self.spec.max_in_flight:
            raise ReplicaOverloadedError(
                f"replica {self.replica} has {self._in_flight} requests in flight (its limit); "
                "not applied, retry later",
                retry_after_s=1.0,
            )
        self._in_flight += 1

    # ------------------------------------------------------------------ calls

    async def ask(
        self,
        aggregate_type: AggregateType | str,
        entity_id: str,
        command: Any,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send ``command`` and return the reply, or raise the typed error (mapped to HTTP by
        the service). ``idempotency_key`` is passed to the reference when it takes one."""
        self._admit()
        try:
            ref = await self.ref(aggregate_type, entity_id)
            kwargs: dict[str, Any] = {"timeout": self.spec.ask_timeout_s}
            if self._pass_keys and idempotency_key is not None and _keys_on(ref.aggregate_type):
                kwargs["idempotency_key"] = idempotency_key
            try:
                return await ref.ask_async(command, **kwargs)
            except HostCrashedError:
                self._forget(ref)  # the next request resolves afresh, off the loop
                raise
        finally:
            self._in_flight -= 1

    async def state(self, aggregate_type: AggregateType | str, entity_id: str) -> Any:
        """The aggregate's current state (read-only; activates it if needed)."""
        self._admit()
        try:
            ref = await self.ref(aggregate_type, entity_id)
            try:
                return await ref.state_async(timeout=self.spec.ask_timeout_s)
            except HostCrashedError:
                self._forget(ref)
                raise
        finally:
            self._in_flight -= 1

    async def view_session(self) -> Any:
        """The replica's Cassandra session for read-side queries (opened on first use)."""
        async with self._session_lock:
            if self._session is None:
                from raysource.journal.cassandra.session import CassandraSession

                config = self.spec.view_config
                if config is None:
                    raise ConfigError("this service has no Cassandra config for its views")
                self._session = await CassandraSession(config).connect()
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._pool.shutdown(wait=False)


# ---------------------------------------------------------------------- HTTP glue


async def idempotency_key(
    request: Request,
    key: str | None = Header(
        None,
        alias=IDEMPOTENCY_HEADER,
        max_length=200,
        description="a client-chosen key for this command; returned "
        "with a 504 so the command can be re-sent under it",
    ),
) -> str:
    """FastAPI dependency: the request's ``Idempotency-Key`` (else a fresh one), kept on
    ``request.state`` for the error answer."""
    request.state.idempotency_key = key or uuid.uuid4().hex
    return request.state.idempotency_key


def install(api: FastAPI, context: ServiceContext) -> FastAPI:
    """Answer every raysource error through :func:`http_error` and tag every answer with the
    replica that produced it (``X-Raysource-Replica``)."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status, body, headers = http_error(
            exc,
            idempotency_key=getattr(request.state, "idempotency_key", None),
            retry_safe=context.retry_safe,
        )
        return JSONResponse(body, status_code=status, headers=headers)

    api.add_exception_handler(RaysourceError, on_error)
    api.add_middleware(_TagReplica, replica=context.replica)
    api.state.raysource = context
    return api


class _TagReplica:
    """Pure ASGI middleware adding ``X-Raysource-Replica`` to every answer (Starlette's
    ``BaseHTTPMiddleware`` would wrap each request in extra tasks and streams)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        if not tracing.ENABLED:
            return await self.app(scope, receive, tagged)
        with tracing.http_server_span(scope):  # the request's traceparent is the parent
            await self.app(scope, receive, tagged)


class _Replica:
    """The Serve deployment class: a :class:`ServiceContext` plus the FastAPI app that
    ``build_api(context)`` returns (built in the replica, after the context)."""

    def __init__(self, spec: ServiceSpec, build_api: Callable[[ServiceContext], FastAPI]) -> None:
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (a direct test): a local name
            replica = f"local-{uuid.uuid4().hex[:6]}"
        self.context = ServiceContext(spec, replica)
        self._build = build_api
        self.started_at = time.time()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return install(self._build(self.context), self.context)

    async def __del__(self) -> None:
        await self.context.close()


_ServiceReplica = serve.ingress()(_Replica)


def service_deployment(
    spec: ServiceSpec,
    build_api: Callable[[ServiceContext], FastAPI],
    *,
    name: str = "raysource-service",
    num_replicas: int = 1,
    max_ongoing_requests: int = 256,
    access_log: bool = False,
    ray_actor_options: Mapping[str, Any] | None = None,
) -> Any:
    """The Serve application: ``num_replicas`` replicas of the service whose routes
    ``build_api(context)`` defines (a picklable function, e.g. a module-level one).
    ``max_ongoing_requests`` is Serve's per-replica concurrency (its default of 5 would
    serialise a service whose requests mostly wait on I/O). ``access_log``: Serve's per-request
    log line in each replica (off by default: it costs CPU on every request)."""
    if num_replicas < 1:
        raise ConfigError(f"num_replicas must be >= 1, got {num_replicas}")
    options = {"num_cpus": 0.01, **(ray_actor_options or {})}
    deployment = serve.deployment(
        name=name,
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options=options,
        logging_config={"enable_access_log": access_log},
    )(_ServiceReplica)
    return deployment.bind(spec, build_api)


def run_service(
    app: Any,
    *,
    name: str = "raysource-service",
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = "/",
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (``port=0``: a free one) if Serve is not
    running on this Ray cluster yet, and deploy ``app`` under ``route_prefix``; returns its
    base URL (on the proxy's actual address) once every replica is up."""
    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    serve.start(http_options={"host": host, "port": port})
    try:  # Serve was running already: its proxy keeps the address it has
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is not None:
            host, port = client.http_config.host, client.http_config.port
    except Exception:  # noqa: BLE001 - a private accessor; the requested address stands
        pass
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
