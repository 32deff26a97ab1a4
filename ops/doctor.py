"""``raysource doctor``: is this deployment healthy? One verdict per line.

:func:`diagnose` runs every check of a running deployment and returns one :class:`Check` per
line; each check has its own deadline (``DoctorSettings.timeout_s``), so a frozen store or a
hung actor turns *its* line red within seconds and never hangs the rest. The checks:

* ``cassandra`` — the node answers a read at the configured read consistency, and the
  keyspace's replication can meet the configured read and write consistencies and makes
  them overlap (``consistency_overlap``);
* ``schema`` — every table of the current schema exists (``raysource schema``; a keyspace
  written before the epoch fence lacks ``messages_v2``: ``raysource schema migrate``), with
  every column added since (e.g. ``timer_index``'s trace context: ``raysource schema
  migrate`` adds them);
* ``ray`` — the driver is connected (with token auth when the cluster requires it) and the
  cluster's alive nodes;
* ``coordinator`` / ``regions`` / ``shards`` (with ``system``) — the system's coordinator
  answers; every region it registered answers a ping; every allocated shard (shards are
  allocated on first use) is on a node that is alive;
* ``timers`` (with ``system``) — every node's timer service answers, none reports an error,
  and their backlog is at most ``max_timer_backlog``;
* ``projection NAME`` (each projection in the offset store, or the names given) — every
  worker runs, its lag is at most ``max_lag_s`` and no aggregate stream is parked;
* ``clock skew`` — the spread of the Ray nodes' wall clocks is below half the read side's
  visibility delay (``eventual_consistency_delay``: a writer whose clock runs behind by more
  could write tag rows a reader has already passed).

The CLI (``raysource.cli.doctor``) prints the table (or ``--json``) and exits 1 when any
line failed.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig, consistency_overlap

__all__ = ["Check", "DoctorSettings", "diagnose"]


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` is the verdict, ``detail`` says why (one line)."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DoctorSettings:
    """What to check. ``system``: the raysource system's name (None: no Ray-side checks of a
    system); ``projections``: names to check (empty: every projection the offset store knows);
    ``ray``: check the Ray cluster (the caller has connected this process)."""

    config: CassandraConfig
    system: str | None = None
    namespace: str | None = None
    projections: tuple[str, ...] = ()
    ray: bool = True
    timeout_s: float = 5.0
    max_lag_s: float = 60.0
    max_timer_backlog: int = 10_000


async def diagnose(settings: DoctorSettings) -> list[Check]:
    """Every check, in the order of the module docstring."""
    checks: list[Check] = []

    async def run(
        name: str, fn: Callable[[], Awaitable[tuple[bool, str]]], slack: float = 1
    ) -> None:
        try:
            ok, detail = await asyncio.wait_for(fn(), settings.timeout_s * slack)
        except TimeoutError:
            ok, detail = False, f"no answer within {settings.timeout_s * slack:g} s"
        except Exception as exc:  # noqa: BLE001 - every failure is this line's verdict
            ok, detail = False, _one_line(f"{type(exc).__name__}: {exc}")
        checks.append(Check(name, ok, detail))

    session_box: list[Any] = []
    await run("cassandra", lambda: _cassandra(settings, session_box))
    session = session_box[0] if session_box else None
    connected = len(session_box) > 1
    try:
        if not connected:
            checks.append(Check("schema", False, "not checked: Cassandra is not reachable"))
        else:
            await run("schema", lambda: _schema(settings.config, session))
        if settings.ray:
            await run("ray", lambda: asyncio.to_thread(_ray))
            if settings.system is not None:
                for name, fn in _system_checks(settings):
                    await run(name, functools.partial(asyncio.to_thread, fn))
            # a task per node: a worker process may have to start first
            await run("clock skew", lambda: asyncio.to_thread(_skew, settings), 4)
        names: Sequence[str] = settings.projections
        if not names and connected:
            try:
                names = await asyncio.wait_for(_projection_names(settings.config, session), 5)
            except Exception:  # noqa: BLE001 - no offset table: no projection to check
                names = ()
        for name in names:
            await run(f"projection {name}", functools.partial(_projection, settings, name))
    finally:
        if session is not None:
            await _close_quietly(session)
    return checks


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


async def _close_quietly(session: Any) -> None:
    try:
        await asyncio.wait_for(session.close(), 5)
    except Exception:  # noqa: BLE001 - a frozen node: the process exits anyway
        pass


# ---------------------------------------------------------------------- Cassandra


async def _cassandra(settings: DoctorSettings, box: list[Any]) -> tuple[bool, str]:
    from raysource.journal.cassandra.session import CassandraSession

    c = settings.config
    session = CassandraSession(c)
    box.append(session)
    await session.connect("")
    box.append("connected")
    row = await session.select_one(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?", (c.keyspace,)
    )
    if row is None:
        return False, f"keyspace {c.keyspace!r} does not exist (raysource schema)"
    replication = dict(row.replication)
    if "replication_factor" in replication:
        dcs, rfs = [""], [int(replication["replication_factor"])]
    else:
        dcs = sorted(k for k in replication if k != "class")
        rfs = [int(replication[k]) for k in dcs]
    local = dcs.index(c.local_dc) if c.local_dc in dcs else 0
    problem = consistency_overlap(c.write_consistency, c.read_consistency, rfs, local)
    if problem:
        return False, problem
    # a read of the keyspace's own table at the read consistency: the replicas answer
    await session.select_all(f"SELECT persistence_id FROM {c.keyspace}.{c.metadata_table} LIMIT 1")
    return True, (
        f"{','.join(c.contact_points)}:{c.port} keyspace {c.keyspace} replication {rfs}, "
        f"write {c.write_consistency} / read {c.read_consistency}"
    )


async def _schema(config: CassandraConfig, session: Any) -> tuple[bool, str]:
    from raysource.journal.cassandra.schema import missing_columns, schema_statements

    wanted = sorted(
        {
            m.group(1)
            for s in schema_statements(config, keyspace=False)
            if (m := re.search(r"CREATE TABLE IF NOT EXISTS \w+\.(\w+)", s))
        }
    )
    rows = await session.select_all(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
        (config.keyspace,),
    )
    have = {r.table_name for r in rows}
    missing = [t for t in wanted if t not in have]
    if missing:
        hint = " (raysource schema migrate)" if config.events_table in missing else ""
        return False, f"missing tables: {', '.join(missing)}{hint}"
    columns = await missing_columns(session, config)
    if columns:
        names = ", ".join(f"{t}.{c}" for t, c, _type in columns)
        return False, f"missing columns: {names} (raysource schema migrate)"
    return True, f"{len(wanted)} tables present"


# ---------------------------------------------------------------------- Ray


def _ray() -> tuple[bool, str]:
    import os

    import ray

    if not ray.is_initialized():
        return False, "this process is not connected to a Ray cluster"
    alive = [n for n in ray.nodes() if n.get("Alive")]
    auth = os.environ.get("RAY_AUTH_MODE", "") == "token"
    return bool(alive), f"{len(alive)} node(s) alive, token auth {'on' if auth else 'off'}"


def _system_checks(settings: DoctorSettings) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    state: dict[str, Any] = {}

    def coordinator() -> tuple[bool, str]:
        import ray

        from raysource.sharding.ray_nodes import get_coordinator

        try:
            handle = get_coordinator(settings.system or "", namespace=settings.namespace)
        except ValueError:
            return False, f"no coordinator of system {settings.system!r} is running"
        info = ray.get(handle.describe.remote(), timeout=settings.timeout_s)
        state["handle"], state["info"] = handle, info
        return True, (
            f"system {info['system']}: {len(info['live_nodes'])} live node(s), "
            f"{len(info['regions'])} region(s) registered"
        )

    def regions() -> tuple[bool, str]:
        import ray

        from raysource.runtime.actors.cluster import region_name

        if "info" not in state:
            return False, "not checked: no coordinator"
        dead = []
        nodes = state["info"]["regions"]
        for node in nodes:
            try:
                handle = ray.get_actor(
                    region_name(settings.system or "", node), namespace=settings.namespace
                )
                ray.get(handle.ping.remote(), timeout=settings.timeout_s / 2)
            except Exception as exc:  # noqa: BLE001 - gone, dead or hung: that region is down
                dead.append(f"{node[:8]} ({type(exc).__name__})")
        if dead:
            return False, f"{len(dead)} of {len(nodes)} region(s) down: {', '.join(dead)}"
        return True, f"{len(nodes)} region(s) answer"

    def shards() -> tuple[bool, str]:
        import ray

        if "handle" not in state:
            return False, "not checked: no coordinator"
        handle = state["handle"]
        counts = ray.get(handle.shard_counts.remote(), timeout=settings.timeout_s)
        table = ray.get(handle.allocation.remote(), timeout=settings.timeout_s)
        live = set(state["info"]["live_nodes"])
        stranded = sorted(
            f"{s.type_name}/{s.shard}@{node[:8]}"
            for node, ss in table.items()
            if node not in live
            for s in ss
        )
        allocated = sum(len(ss) for ss in table.values())
        total = sum(counts.values())
        if stranded:
            more = "..." if len(stranded) > 5 else ""
            return False, (
                f"{len(stranded)} shard(s) allocated to a node that is not alive: "
                f"{', '.join(stranded[:5])}{more}"
            )
        return True, (
            f"{allocated} of {total} shards of {len(counts)} type(s) allocated (on first "
            "use), all to live nodes"
        )

    def timers() -> tuple[bool, str]:
        import ray

        from raysource.sharding.ray_nodes import named_actors

        names = named_actors(settings.namespace, f"{settings.system}:timers:")
        if not names:
            return True, "no timer services (timers are journaled, fired once a service runs)"
        infos: list[dict[str, Any]] = ray.get(
            [ray.get_actor(n, namespace=ns).info.remote() for n, ns in names],
            timeout=settings.timeout_s,
        )
        backlog = sum(int(i.get("backlog") or 0) for i in infos)
        errors = [str(i["error"]) for i in infos if i.get("error")]
        if errors:
            return False, f"timer service error: {_one_line(errors[0])}"
        if backlog > settings.max_timer_backlog:
            return False, f"backlog {backlog} due timers (limit {settings.max_timer_backlog})"
        return True, f"{len(infos)} service(s), backlog {backlog}"

    return [
        ("coordinator", coordinator),
        ("regions", regions),
        ("shards", shards),
        ("timers", timers),
    ]


def _skew(settings: DoctorSettings) -> tuple[bool, str]:
    """Each alive node's wall clock against this process's (half the round trip is taken as
    the transfer time): asked of the system's timer services (one per node, already
    running), else of a task pinned to each node (a worker process may have to start)."""
    import ray

    from raysource.sharding.ray_nodes import live_nodes, named_actors, node_affinity

    @ray.remote(max_retries=0)
    def wall() -> tuple[str, float]:
        return ray.get_runtime_context().get_node_id(), time.time()

    services = (
        named_actors(settings.namespace, f"{settings.system}:timers:") if settings.system else []
    )
    calls: list[Any] = [
        (lambda n=n, ns=ns: ray.get_actor(n, namespace=ns).wall_clock.remote())
        for n, ns in services
    ]
    asked = {name.rsplit(":", 1)[-1] for name, _ in services}
    calls += [
        (lambda node=node: wall.options(**node_affinity(node)).remote())
        for node in live_nodes()
        if node not in asked
    ]
    offsets = []
    for call in calls:
        sent = time.time()
        _node, theirs = ray.get(call(), timeout=settings.timeout_s * 3)
        back = time.time()
        offsets.append(theirs - (sent + back) / 2)
    spread = (max(offsets) - min(offsets)) if offsets else 0.0
    worst = max((abs(o) for o in offsets), default=0.0)
    budget = settings.config.eventual_consistency_delay / 2
    verdict = (
        f"{len(offsets)} node(s), spread {spread * 1000:.0f} ms, worst offset "
        f"{worst * 1000:.0f} ms (budget {budget * 1000:.0f} ms: half the read side's "
        "visibility delay)"
    )
    return max(spread, worst) < budget, verdict


# ---------------------------------------------------------------------- projections


async def _projection_names(config: CassandraConfig, session: Any) -> list[str]:
    rows = await session.select_all(
        f"SELECT DISTINCT projection FROM {config.keyspace}.projection_offsets"
    )
    return sorted(r.projection for r in rows)


async def _projection(settings: DoctorSettings, name: str) -> tuple[bool, str]:
    from raysource.readside.projection_actor import Projections

    workers = await Projections(settings.config).status(name)
    if not workers:
        return False, "no workers and no stored offsets"
    bad, lag, parked = [], 0.0, 0
    for w in workers:
        state = str(w.get("state"))
        if state != "running":
            bad.append(f"{w.get('worker')}: {state}")
        lag = max(lag, float(w.get("lag_seconds") or 0.0))
        parked += len(w.get("parked") or ())
    detail = f"{len(workers)} worker(s), lag {lag:.1f} s, parked {parked}"
    if bad:
        return False, f"{detail}; {'; '.join(bad)}"
    if lag > settings.max_lag_s:
        return False, f"{detail} (limit {settings.max_lag_s:g} s)"
    if parked:
        return False, f"{detail}: parked aggregate streams (raysource projection parked)"
    return True, detail
