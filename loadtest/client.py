"""The load client: a Ray actor that drives one share of a workload against a system.

Clients are Ray actors so load can come from every node of a cluster. Each joins the system by
name (``System.start`` is get-or-create), holds its *own*
:class:`~raysource.runtime.actors.refs.EntityRef` per entity (one ref = one caller, so its commands
keep their send order) and keeps ``window`` commands in flight with ``ask_async``. With
``ClientSetup.http_url`` it sends the same commands over HTTP instead, to the seat service
(:mod:`raysource.examples.seats_service`) with an httpx client: 2xx is accepted, 409 rejected,
anything else an error (so both paths report the same figures, and the HTTP layer's cost shows
beside direct reference calls).

Contract of :meth:`LoadClient.run`: every command it sends gets exactly one recorded outcome —
``accepted`` (a reply), ``rejected`` (``CommandRejected``) or ``error`` (anything else,
including a timeout: outcome unknown) — so ``sent == accepted + rejected + errors`` and the
per-second buckets (by completion time, relative to the shared ``start_at``) sum to ``sent``.
"""

from __future__ import annotations

import asyncio
import math
import operator
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray

from raysource.loadtest.workloads import Workload
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.errors import CommandRejected
from raysource.runtime.stores import StoreSpec

__all__ = ["ClientResult", "ClientSetup", "LoadClient", "OUTCOMES"]

OUTCOMES = ("accepted", "rejected", "errors")
_MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class ClientSetup:
    """What a client needs to join the system (picklable)."""

    system: str
    namespace: str
    store: StoreSpec
    workload: Workload
    placement: str
    host_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    ask_timeout_s: float = 30.0
    http_url: str | None = None  # send through the HTTP service at this base URL


@dataclass
class ClientResult:
    """One client's record of a run. ``latencies_ms`` and ``outcomes`` are per command kind;
    ``per_second[s]`` counts completions in second ``s`` after ``start_at`` as
    ``[accepted, rejected, errors]``; ``tallies[entity][kind]`` counts *accepted* commands per
    entity and kind, ``tallies[entity]["error"]`` commands with an unknown outcome."""

    index: int
    sent: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    per_second: dict[int, list[int]] = field(default_factory=dict)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    prepare_s: float = 0.0
    finished_at: float = 0.0  # wall clock of the last completion
    node_id: str = ""


class _LoadClient:
    """See the module docstring. Methods are coroutines (an async actor), so ``progress`` is
    answered while ``run`` is in progress."""

    def __init__(self, index: int, setup: ClientSetup) -> None:
        self.index = index
        self.setup = setup
        self.refs: dict[str, EntityRef] = {}
        self.result = ClientResult(index, node_id=ray.get_runtime_context().get_node_id())
        self._done = [0, 0, 0]  # accepted, rejected, errors (for progress)
        self.http: Any = None  # an httpx.AsyncClient in HTTP mode

    async def prepare(self) -> float:
        """Join the system, resolve every entity's host handle and wait until those host
        actors are up. Resolving blocks on Ray round trips (and may create actors), so it runs
        in threads here, before the timed run, instead of stalling the run's event loop.
        Returns the seconds it took."""
        from raysource.sharding.system import System

        t0 = time.perf_counter()
        s = self.setup
        if s.http_url is not None:
            return await self._prepare_http(t0)
        agg = s.workload.aggregate_type
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:
            system = await loop.run_in_executor(
                pool,
                lambda: System.start(
                    s.system,
                    store=s.store,
                    types=[agg],
                    namespace=s.namespace,
                    placement={agg.name: s.placement},
                    host_settings=s.host_settings,
                ),
            )
            self.refs = {eid: system.entity(agg, eid) for eid in s.workload.entity_ids()}
            handles = await asyncio.gather(
                *[
                    loop.run_in_executor(pool, operator.attrgetter("actor"), r)
                    for r in self.refs.values()
                ]
            )
        # creating an actor returns at once; wait until each host process is up (its stores
        # open and entities recover on their first command, inside the timed run)
        await asyncio.gather(*[h.ping.remote() for h in set(handles)])
        self.result.prepare_s = time.perf_counter() - t0
        return self.result.prepare_s

    async def _prepare_http(self, t0: float) -> float:
        """HTTP mode: open the client and ask the service for every entity's state once, so
        its replica has resolved the host before the timed run (as ``prepare`` does for refs;
        this also activates the entity, which the refs mode leaves to the timed run)."""
        import httpx

        from raysource.examples.seats import GetShow
        from raysource.examples.seats_service import http_request

        assert self.setup.http_url is not None  # HTTP mode
        self.http = httpx.AsyncClient(
            base_url=self.setup.http_url,
            timeout=self.setup.ask_timeout_s,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )
        sem = asyncio.Semaphore(16)

        async def warm(entity_id: str) -> None:
            method, path, _, _ = http_request(entity_id, GetShow())
            async with sem:  # activations on a busy machine may take long: not timed
                (await self.http.request(method, path, timeout=120.0)).raise_for_status()

        await asyncio.gather(*[warm(e) for e in self.setup.workload.entity_ids()])
        self.result.prepare_s = time.perf_counter() - t0
        return self.result.prepare_s

    async def _http_ask(self, entity_id: str, command: Any) -> None:
        """Send ``command`` through the service: returns on 2xx, raises ``CommandRejected``
        on 409 and ``RuntimeError`` naming the status otherwise."""
        from raysource.examples.seats_service import http_request

        method, path, body, query = http_request(entity_id, command)
        answer = await self.http.request(method, path, json=body, params=query)
        if answer.status_code < 300:
            return
        if answer.status_code == 409:
            raise CommandRejected(answer.json().get("detail", ""))
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")

    async def progress(self) -> tuple[int, int, int]:
        """Completed commands so far: (accepted, rejected, errors)."""
        return self._done[0], self._done[1], self._done[2]

    async def run(
        self, start_at: float, duration_s: float | None, commands: int | None, window: int
    ) -> ClientResult:
        """Send commands from ``start_at`` (wall clock) until ``duration_s`` has passed or
        ``commands`` were sent, keeping ``window`` in flight; returns the record."""
        source = self.setup.workload.generator(self.index, self.setup.seed)
        deadline = start_at + duration_s if duration_s is not None else math.inf
        budget = commands if commands is not None else math.inf
        res = self.result
        timeout = self.setup.ask_timeout_s
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def worker() -> None:
            while res.sent < budget and time.time() < deadline:
                res.sent += 1
                entity_id, command, kind = source.next()
                t0 = time.perf_counter()
                try:
                    if self.http is None:
                        await self.refs[entity_id].ask_async(command, timeout=timeout)
                    else:
                        await self._http_ask(entity_id, command)
                    outcome = 0
                except CommandRejected:
                    outcome = 1
                except Exception as exc:  # noqa: BLE001 - every failure is a recorded outcome
                    outcome = 2
                    if len(res.error_samples) < _MAX_ERROR_SAMPLES:
                        res.error_samples.append(f"{kind} {entity_id}: {exc!r}")
                latency = (time.perf_counter() - t0) * 1000.0
                self._record(entity_id, kind, outcome, latency, time.time() - start_at)
                source.outcome(entity_id, command, kind, outcome == 0)

        await asyncio.gather(*[worker() for _ in range(window)])
        res.finished_at = time.time()
        res.tallies = {k: dict(v) for k, v in res.tallies.items()}
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        return res

    def _record(
        self, entity_id: str, kind: str, outcome: int, latency_ms: float, since_start: float
    ) -> None:
        res = self.result
        self._done[outcome] += 1
        res.latencies_ms.setdefault(kind, []).append(latency_ms)
        counts = res.outcomes.setdefault(kind, dict.fromkeys(OUTCOMES, 0))
        counts[OUTCOMES[outcome]] += 1
        res.per_second.setdefault(max(0, int(since_start)), [0, 0, 0])[outcome] += 1
        tally = res.tallies.setdefault(entity_id, defaultdict(int))
        if outcome == 0:
            tally[kind] += 1
        elif outcome == 2:
            tally["error"] += 1


LoadClient = ray.remote(_LoadClient)
"""The Ray actor class: ``LoadClient.options(...).remote(index, setup)``."""
