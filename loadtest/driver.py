"""The load engine behind ``raysource loadtest`` and ``raysource demo``.

    params = LoadTestParams(workload="seats", entities=200, clients=2, duration_s=10)
    report = run_loadtest(params, "127.0.0.1:9042")      # Ray must be initialised
    report.result["figures"]["commands_per_s"], report.consistency.ok, report.png_path

:func:`run_loadtest` starts a fresh system (unique name; entity ids embed the run id, so every
run drives new aggregates), starts ``clients`` :class:`~raysource.loadtest.client.LoadClient`
actors, lets them join and resolve their entities (not timed), runs the workload with a
progress display polled every 0.5 s, aggregates the records, runs the consistency check on a
sample, and writes ``<results>/<run-id>/result.json`` and ``report.png``. Whatever happens, it
kills its clients and shuts the system down, then verifies that no named actor of the system
is left (``LoadTestReport.leftover_actors``).

:func:`~raysource.loadtest.standalone.run_standalone` adds what a command line needs around it:
selecting Cassandra (and stopping a node it started), starting and stopping Ray, printing the
summary.

``via="http"`` deploys the seat service (:mod:`raysource.examples.seats_service`, ``replicas`` Ray
Serve replicas joined to the run's system) and the clients send the same commands over HTTP;
``via="both"`` (:func:`~raysource.loadtest.standalone.run_standalone`) runs the workload through
references, then through HTTP, on the same Ray and Cassandra, and prints both figures side by
side.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import ray

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.errors import ConfigError
from raysource.loadtest.client import ClientResult, ClientSetup, LoadClient
from raysource.loadtest.consistency import ConsistencyReport, check, pick_sample
from raysource.loadtest.report import aggregate, write
from raysource.loadtest.workloads import WORKLOADS, make_workload
from raysource.runtime.actors.cluster import parse_name, system_of
from raysource.runtime.stores import StoreSpec
from raysource.sharding.ray_nodes import named_actors
from raysource.sharding.system import System, unique_system_name

__all__ = ["LoadExtension", "LoadTestParams", "LoadTestReport", "Say", "run_loadtest"]

Say = Callable[[str], None]

_POLL_S = 0.5


@dataclass(frozen=True)
class LoadTestParams:
    """A load run. Exactly one of ``duration_s`` and ``commands`` (total over all clients).

    ``shards`` overrides the type's shard count (a hosted shard is one Ray actor);
    ``snapshot_every`` its snapshot policy (0 = none); ``guard`` is the journal's fencing;
    ``window`` the commands each client keeps in flight; ``sample`` how many entities the
    consistency check replays. ``address`` is only used by :func:`run_standalone`.
    ``eventual_consistency_delay`` overrides the journal's tag visibility delay (None: the
    config's default), e.g. so a projection started alongside catches up quickly.
    """

    workload: str = "seats"
    entities: int = 200
    clients: int = 2
    duration_s: float | None = 10.0
    commands: int | None = None
    placement: str = "hosted"
    snapshot_every: int | None = None
    guard: bool = True
    window: int = 8
    shards: int | None = None
    keyspace: str = "raysource"
    results_dir: str = "results"
    address: str | None = None
    sample: int = 10
    seed: int = 0
    eventual_consistency_delay: float | None = None
    via: str = "refs"
    replicas: int = 1
    http_port: int = 0  # 0: a free port

    def __post_init__(self) -> None:
        if self.via not in ("refs", "http", "both"):
            raise ConfigError(f"via must be refs, http or both, got {self.via!r}")
        if self.via != "refs" and self.workload != "seats":
            raise ConfigError("the HTTP mode drives the seat service: use --workload seats")
        if self.replicas < 1:
            raise ConfigError(f"replicas must be >= 1, got {self.replicas}")
        if self.workload not in WORKLOADS:
            raise ConfigError(f"unknown workload {self.workload!r} (one of {WORKLOADS})")
        if (self.duration_s is None) == (self.commands is None):
            raise ConfigError("give exactly one of a duration and a command count")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration must be > 0, got {self.duration_s}")
        if self.commands is not None and self.commands < 1:
            raise ConfigError(f"command count must be >= 1, got {self.commands}")
        if self.placement not in ("dedicated", "hosted"):
            raise ConfigError(f"placement must be dedicated or hosted, got {self.placement!r}")
        for name in ("entities", "clients", "window", "sample"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"shards must be >= 1, got {self.shards}")
        if self.snapshot_every is not None and self.snapshot_every < 0:
            raise ConfigError(f"snapshot-every must be >= 0, got {self.snapshot_every}")


@dataclass
class LoadTestReport:
    """What a run produced. ``result`` is exactly what ``result.json`` holds."""

    run_id: str
    system: str
    result: dict[str, Any]
    consistency: ConsistencyReport
    json_path: Path
    png_path: Path
    leftover_actors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.consistency.ok and not self.leftover_actors


class LoadExtension(Protocol):
    """Extra work around the load (the demo's read side): ``before_load`` runs once the system
    and clients are up, ``after_load`` once every client finished (the system still runs),
    ``close`` always (also on failure). ``lines()`` is printed after the consistency check;
    ``ok`` counts toward the exit code."""

    @property
    def ok(self) -> bool: ...

    def before_load(
        self, system: System, config: CassandraConfig, workload: Any, say: Say
    ) -> None: ...

    def after_load(
        self,
        system: System,
        config: CassandraConfig,
        workload: Any,
        tallies: dict[str, dict[str, int]],
        say: Say,
    ) -> None: ...

    def close(self, say: Say) -> None: ...

    def lines(self) -> list[str]: ...


def new_run_id(workload: str) -> str:
    return f"{workload}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def run_loadtest(
    params: LoadTestParams,
    contact: str,
    *,
    say: Say = print,
    progress: bool = True,
    run_id: str | None = None,
    extension: LoadExtension | None = None,
) -> LoadTestReport:
    """Run ``params`` against Cassandra at ``contact`` on the already initialised Ray (see
    the module docstring for the steps and guarantees)."""
    if not ray.is_initialized():
        raise ConfigError("run_loadtest needs Ray initialised (run_standalone does it)")
    if params.via == "both":
        raise ConfigError("run_loadtest runs one path: refs or http (run_standalone does both)")
    run_id = run_id or new_run_id(params.workload)
    workload = make_workload(
        params.workload,
        run_id=run_id,
        entities=params.entities,
        shards=params.shards,
        snapshot_every=params.snapshot_every,
    )
    agg = workload.aggregate_type
    extra: dict[str, Any] = {}
    if params.eventual_consistency_delay is not None:
        extra["eventual_consistency_delay"] = params.eventual_consistency_delay
    # credentials and TLS from the RAYSOURCE_CASSANDRA_* variables, as the CLI's other commands
    config = CassandraConfig.from_env(
        contact, keyspace=params.keyspace, fencing=params.guard, **extra
    )
    store = StoreSpec.for_cassandra(config, create_schema=True)
    name = unique_system_name("lt")
    namespace = ray.get_runtime_context().namespace
    placement = {agg.name: params.placement}
    t0 = time.perf_counter()
    system = System.start(name, store=store, types=[agg], namespace=namespace, placement=placement)
    say(
        f"system {name}: {agg.name} x {params.entities} ({params.placement}, "
        f"{agg.number_of_shards} shards), started in {time.perf_counter() - t0:.1f} s"
    )
    clients: list[Any] = []
    service: str | None = None
    try:
        http_url = None
        if params.via == "http":
            service, http_url = _deploy_service(params, name, store, agg, namespace, say)
        setup = ClientSetup(
            name, namespace, store, workload, params.placement, seed=params.seed, http_url=http_url
        )
        clients = [
            LoadClient.options(num_cpus=0.01, scheduling_strategy="SPREAD").remote(i, setup)
            for i in range(params.clients)
        ]
        t0 = time.perf_counter()
        ray.get([c.prepare.remote() for c in clients])
        say(
            f"{params.clients} load clients joined and resolved their entities in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        if extension is not None:
            extension.before_load(system, config, workload, say)
        results = _drive(params, clients, progress, say)
        start_at = results[0][1]
        records = [r for r, _ in results]
        elapsed = max(r.finished_at for r in records) - start_at
        result = aggregate(records, elapsed_s=elapsed)
        tallies = _merge_tallies(records)
        sample = pick_sample(workload, tallies, params.sample, params.seed)
        consistency = check(system, config, workload, tallies, sample)
        if extension is not None:
            extension.after_load(system, config, workload, tallies, say)
        result["figures"]["group_commit"] = _host_stats(name, namespace)
    finally:
        if extension is not None:
            extension.close(say)
        for c in clients:
            ray.kill(c)
        if service is not None:
            from ray import serve

            serve.delete(service)
        system.shutdown()
        leftovers = _wait_gone(name, namespace)
    result = {
        "run_id": run_id,
        "system": name,
        "started_at": datetime.fromtimestamp(start_at, UTC).isoformat(),
        "parameters": {k: v for k, v in asdict(params).items() if k != "results_dir"},
        "aggregate_type": {
            "name": agg.name,
            "shards": agg.number_of_shards,
            "snapshot_every": agg.snapshot.every_n_events,
        },
        **result,
        "consistency": consistency.to_json(),
        "leftover_actors": leftovers,
    }
    json_path, png_path = write(result, Path(params.results_dir) / run_id)
    return LoadTestReport(run_id, name, result, consistency, json_path, png_path, leftovers)


def _deploy_service(
    params: LoadTestParams, name: str, store: StoreSpec, agg: Any, namespace: str, say: Say
) -> tuple[str, str]:
    """Deploy the seat service for system ``name``; returns (Serve app name, base URL)."""
    from raysource.examples.seats_service import seats_app
    from raysource.service.deployment import ServiceSpec, run_service

    t0 = time.perf_counter()
    spec = ServiceSpec(
        name,
        store,
        (agg,),
        namespace,
        placement={agg.name: params.placement},
        ask_timeout_s=30.0,
        max_in_flight=100_000,
    )
    app = seats_app(
        spec,
        num_replicas=params.replicas,
        max_ongoing_requests=max(256, params.clients * params.window),
    )
    url = run_service(app, name=name, port=params.http_port, route_prefix=f"/{name}")
    say(
        f"seat service: {params.replicas} Ray Serve replica(s) at {url} up in "
        f"{time.perf_counter() - t0:.1f} s (OpenAPI: {url}/docs)"
    )
    return name, url


def _drive(
    params: LoadTestParams, clients: list[Any], progress: bool, say: Say
) -> list[tuple[ClientResult, float]]:
    """Start every client at the same wall-clock instant and show progress until all are
    done; returns each client's record with the shared start time."""
    n = len(clients)
    shares: list[int | None] = [None] * n
    if params.commands is not None:
        base, extra = divmod(params.commands, n)
        shares = [base + (1 if i < extra else 0) for i in range(n)]
    start_at = time.time() + 0.3
    pending = [
        c.run.remote(start_at, params.duration_s, shares[i], params.window)
        for i, c in enumerate(clients)
    ]
    display = _Progress(params, enabled=progress, say=say)
    waiting = list(pending)
    try:
        while waiting:
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=_POLL_S)
            try:
                counts = ray.get([c.progress.remote() for c in clients], timeout=5.0)
            except ray.exceptions.GetTimeoutError:
                continue
            done = [sum(c[i] for c in counts) for i in range(3)]
            display.update(max(0.0, time.time() - start_at), done)
    finally:
        display.close()
    return [(r, start_at) for r in ray.get(pending)]


class _Progress:
    """A tqdm bar on a terminal; a line every ~2 s otherwise (logs, CI)."""

    def __init__(self, params: LoadTestParams, *, enabled: bool, say: Say) -> None:
        self.params, self.say, self.enabled = params, say, enabled
        self.bar = None
        self._last_line = 0.0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            if params.duration_s is not None:
                self.bar = tqdm(
                    total=round(params.duration_s, 1),
                    unit="s",
                    file=sys.stderr,
                    bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s{postfix}",
                )
            else:
                self.bar = tqdm(total=params.commands, unit="cmd", file=sys.stderr)

    def update(self, elapsed: float, done: list[int]) -> None:
        if not self.enabled:
            return
        total = sum(done)
        rate = total / elapsed if elapsed > 0 else 0.0
        text = (
            f"{total:,} commands, {rate:,.0f}/s, accepted {done[0]:,}, "
            f"rejected {done[1]:,}, errors {done[2]:,}"
        )
        if self.bar is not None:
            self.bar.n = (
                min(round(elapsed, 1), self.bar.total)
                if self.params.duration_s is not None
                else total
            )
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.refresh()
        elif elapsed - self._last_line >= 2.0:
            self._last_line = elapsed
            self.say(f"  [{elapsed:5.1f} s] {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _merge_tallies(records: list[ClientResult]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        for eid, kinds in r.tallies.items():
            for kind, n in kinds.items():
                merged[eid][kind] += n
    return {eid: dict(k) for eid, k in merged.items()}


def _system_actor_names(name: str, namespace: str) -> list[str]:
    return [n for n, _ in named_actors(namespace) if system_of(n) == name]


def _host_stats(name: str, namespace: str) -> dict[str, Any]:
    """Commands vs journal writes summed over the system's host actors (group commit)."""
    handles = []
    for actor_name in _system_actor_names(name, namespace):
        parsed = parse_name(actor_name)
        if parsed is not None and parsed.kind in ("dedicated", "hosted"):
            try:
                handles.append(ray.get_actor(actor_name, namespace=namespace))
            except ValueError:
                pass
    try:
        infos: list[dict[str, Any]] = ray.get([h.info.remote() for h in handles], timeout=15.0)
    except Exception:  # noqa: BLE001 - diagnostics only; the run's figures stand without it
        return {}
    commands = sum(i.get("stats", {}).get("commands", 0) for i in infos)
    writes = sum(i.get("stats", {}).get("writes", 0) for i in infos)
    return {
        "hosts": len(infos),
        "commands": commands,
        "writes": writes,
        "commands_per_write": round(commands / writes, 3) if writes else 0.0,
    }


def _wait_gone(name: str, namespace: str, timeout: float = 10.0) -> list[str]:
    """Named actors of the system still registered after ``timeout`` (ray.kill is async)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _system_actor_names(name, namespace)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
