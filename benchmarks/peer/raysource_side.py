"""One round of the peer benchmark on raysource (and the limits), in its own process and its own
local Ray instance, so its memory is the whole tree of processes it started.

Through the public API only: ``System.start(..., store=StoreSpec.for_cassandra(config))``,
``system.entity(PEER, id)``, ``ask_async``/``ask_many``, ``ref.actor.passivate``/``info``.
Callers are asyncio tasks of this driver, one ``EntityRef`` per (caller, aggregate): the
Python twin of the Pekko program's futures. Writes one JSON object to ``--out``.

  python -m benchmarks.peer.raysource_side --contact 127.0.0.1:9042 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args

from benchmarks.peer.aggregate import PAYLOAD, PEER, Add
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

ROOT = Path(__file__).resolve().parents[2]


def init_ray(namespace: str) -> None:
    """A local Ray instance whose workers import the aggregate module by reference, as a user's
    would be: the repository goes on their path (the raylet and the workers inherit this
    process's environment). Shipping the module by value instead (cloudpickle's
    register_pickle_by_value) pickled the class with every command: 4.4 KB and ~2 ms per call."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    ray.init(
        address="local",
        namespace=namespace,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )  # its own instance, always


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(latencies: list[float], seconds: float, errors: int = 0) -> dict:
    return {
        "commands": len(latencies),
        "seconds": seconds,
        "commands_per_s": len(latencies) / seconds,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "errors": errors,
    }


# --------------------------------------------------------------------------- memory (Linux /proc)


def _rss_and_children() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss bytes) of every readable process."""
    out = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(d)] = (int(fields[1]), int(fields[21]) * page)
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_rss(root: int | None = None) -> dict:
    """RSS summed over ``root`` (this process) and all its descendants: the driver, Ray's GCS,
    raylet, agents and every worker (workers are the raylet's children)."""
    root = root or os.getpid()
    procs = _rss_and_children()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        if pid in procs:
            seen.append(pid)
            todo.extend(kids.get(pid, []))
    return {
        "rss_bytes": sum(procs[p][1] for p in seen),
        "pss_bytes": sum(map(_pss, seen)),
        "processes": len(seen),
    }


def tree_cpu_s(root: int | None = None) -> float:
    """User + system CPU seconds of ``root`` (this process) and its live descendants."""
    root = root or os.getpid()
    procs = _rss_and_children()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo, tick = 0.0, [root], os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _pss(pid: int) -> int:
    """Proportional set size (shared pages split between their users), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- limits


@ray.remote(num_cpus=0.01, max_concurrency=1000)
class Bare:
    """A bare async Ray actor: the floor under a host actor call."""

    async def ping(self) -> str:
        return "pong"


def limits(config: CassandraConfig, n: int) -> dict:
    """Plain and ``IF NOT EXISTS`` single-row insert p50 (sequential), plain inserts/s with 50
    in flight, and a bare Ray actor call p50, measured from this process."""
    cluster = Cluster(
        list(config.contact_points),
        port=config.port,
        protocol_version=5,
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    session = cluster.connect()
    ks = config.keyspace
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {ks}.limit_rows (persistence_id text, "
        "partition_nr bigint, sequence_nr bigint, timestamp_us bigint, "
        "writer_id text, ser_id int, manifest text, payload blob, "
        "PRIMARY KEY ((persistence_id, partition_nr), sequence_nr))"
    )
    cols = (
        "(persistence_id, partition_nr, sequence_nr, timestamp_us, writer_id, ser_id, "
        "manifest, payload)"
    )
    plain = session.prepare(f"INSERT INTO {ks}.limit_rows {cols} VALUES (?,?,?,?,?,?,?,?)")
    lwt = session.prepare(
        f"INSERT INTO {ks}.limit_rows {cols} VALUES (?,?,?,?,?,?,?,?) IF NOT EXISTS"
    )
    payload = ('{"data":"' + PAYLOAD + '"}').encode()
    run = uuid.uuid4().hex[:8]

    def row(pid: str, seq: int) -> tuple:
        return (pid, 0, seq, int(time.time() * 1e6), "w", 1, "peer.Added#1", payload)

    out: dict[str, Any] = {}
    for name, stmt in (("insert", plain), ("insert_if_not_exists", lwt)):
        times = []
        for i in range(n + 20):
            t = time.perf_counter()
            session.execute(stmt, row(f"{name}-{run}", i))
            if i >= 20:  # warm-up rows
                times.append(time.perf_counter() - t)
        out[f"{name}_p50_ms"] = pct(times, 50) * 1000
    many = [row(f"conc-{run}-{i % 50}", i) for i in range(10 * n)]
    t = time.perf_counter()
    execute_concurrent_with_args(session, plain, many, concurrency=50, raise_on_first_error=True)
    out["inserts_per_s_50_in_flight"] = len(many) / (time.perf_counter() - t)
    cluster.shutdown()

    bare = Bare.remote()
    ray.get(bare.ping.remote())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        ray.get(bare.ping.remote())
        times.append(time.perf_counter() - t)
    out["bare_ray_call_p50_ms"] = pct(times, 50) * 1000
    ray.kill(bare)
    return out


# --------------------------------------------------------------------------- workloads


async def closed_loop(
    pick: Callable[[int], EntityRef], callers: int, warmup: float, seconds: float
) -> dict:
    """``callers`` tasks, each sending its next ``Add`` when the last is answered, for
    ``warmup + seconds``; latencies of commands sent and answered inside the measured window."""
    start = time.perf_counter()
    clock_from, clock_to = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = answered = 0
    cpu0 = tree_cpu_s()

    async def caller(c: int) -> None:
        nonlocal errors, answered
        while (t0 := time.perf_counter()) < clock_to:
            try:
                await pick(c).ask_async(Add(PAYLOAD), timeout=30)
            except Exception:  # noqa: BLE001 - counted, the loop goes on like Pekko's
                errors += 1
                continue
            answered += 1
            t1 = time.perf_counter()
            if t0 >= clock_from and t1 <= clock_to:
                latencies.append(t1 - t0)

    await asyncio.gather(*(caller(c) for c in range(callers)))
    out = summary(latencies, seconds, errors)
    # CPU of this driver and its whole Ray instance per answered command, warm-up included;
    # the Cassandra node's CPU is not in it (like the JVM's figure on the Pekko side)
    out["cpu_ms_per_command"] = 1000 * (tree_cpu_s() - cpu0) / max(1, answered)
    return out


def counters(ref: EntityRef) -> tuple[int, int]:
    """(commands, journal writes) of the host actor of ``ref`` so far."""
    stats = ray.get(ref.actor.info.remote())["stats"]
    return stats["commands"], stats["writes"]


def w1(system: System, callers: int, warmup: float, seconds: float) -> dict:
    entity = f"hot-{uuid.uuid4().hex[:8]}"
    refs = [system.entity(PEER, entity) for _ in range(callers)]
    refs[0].ask(Add(PAYLOAD), timeout=60)  # activation outside the clock
    commands, writes = counters(refs[0])
    out = asyncio.run(closed_loop(lambda c: refs[c], callers, warmup, seconds))
    commands_after, writes_after = counters(refs[0])  # over warm-up + window
    out["commands_per_write"] = (commands_after - commands) / max(1, writes_after - writes)
    return out


def w2(system: System, entities: int, callers: int, warmup: float, seconds: float) -> dict:
    ids = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(entities)]
    first = [system.entity(PEER, e) for e in ids]

    async def touch() -> int:
        """Every aggregate once, concurrently; failed ones (e.g. a host actor whose Cassandra
        connect timed out on a loaded machine) again, one by one, after. Returns failures."""
        outcomes = await asyncio.gather(
            *(r.ask_async(Add(PAYLOAD), timeout=120) for r in first), return_exceptions=True
        )
        failed = [r for r, o in zip(first, outcomes) if isinstance(o, Exception)]
        for r in failed:
            await r.ask_async(Add(PAYLOAD), timeout=120)
        return len(failed)

    t = time.perf_counter()
    touch_errors = asyncio.run(touch())
    first_touch = time.perf_counter() - t
    refs: list[dict[str, EntityRef]] = [{} for _ in range(callers)]
    rng = random.Random(1)

    def pick(c: int) -> EntityRef:
        e = ids[rng.randrange(entities)]
        ref = refs[c].get(e)
        if ref is None:
            ref = refs[c][e] = system.entity(PEER, e)
        return ref

    out = asyncio.run(closed_loop(pick, callers, warmup, seconds))
    out["first_touch_s"] = first_touch
    out["first_touch_errors"] = touch_errors
    out["entities"] = entities
    return out


def w4(system: System, n: int) -> dict:
    ref = system.entity(PEER, f"seq-{uuid.uuid4().hex[:8]}")
    ref.ask(Add(PAYLOAD), timeout=60)
    times = []
    t = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        ref.ask(Add(PAYLOAD), timeout=30)
        times.append(time.perf_counter() - t0)
    return summary(times, time.perf_counter() - t)


def fill(system: System, entity: str, events: int) -> None:
    ref = system.entity(PEER, entity)
    for done in range(0, events, 100):
        outcomes = ref.ask_many([Add(PAYLOAD)] * min(100, events - done), timeout=60)
        bad = [o for o in outcomes if not isinstance(o, int)]
        assert not bad, bad[:3]


def w3_hosted(system: System, entity: str, recoveries: int) -> list[float]:
    """Passivate ``entity`` inside its (warm) host actor, then time the first command."""
    out = []
    for _ in range(recoveries):
        ref = system.entity(PEER, entity)
        assert ray.get(ref.actor.passivate.remote(entity), timeout=30)
        t = time.perf_counter()
        system.entity(PEER, entity).ask(Add(PAYLOAD), timeout=60)
        out.append((time.perf_counter() - t) * 1000)
    return out


def w3_dedicated(system: System, entity: str, recoveries: int) -> list[float]:
    """Time the first command to ``entity`` with no activation (actor creation, store connect,
    recovery, one write), then passivate it and wait for its actor to exit; ``recoveries``
    times."""
    out = []
    for _ in range(recoveries):
        t = time.perf_counter()
        ref = system.entity(PEER, entity)
        ref.ask(Add(PAYLOAD), timeout=60)
        out.append((time.perf_counter() - t) * 1000)
        handle = ref.actor
        ray.get(handle.passivate.remote(entity), timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get(handle.ping.remote(), timeout=5)
                time.sleep(0.1)
            except Exception:  # noqa: BLE001 - gone: the name is free
                break
        system.resolver.invalidate(PEER, entity, handle)
    return out


# --------------------------------------------------------------------------- main


def start(config: CassandraConfig, placement: str, aggregate: AggregateType = PEER) -> System:
    return System.start(
        f"peer{uuid.uuid4().hex[:8]}",
        store=StoreSpec.for_cassandra(config),
        types=[aggregate],
        placement={aggregate.name: placement},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="peer_raysource")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--callers", type=int, default=50)
    ap.add_argument("--entities", type=int, default=1000)
    ap.add_argument("--sequential", type=int, default=2000)
    ap.add_argument("--recovery-events", type=int, default=10000)
    ap.add_argument("--recoveries", type=int, default=3)
    ap.add_argument("--limit-samples", type=int, default=300)
    ap.add_argument("--workloads", default="w1,w2,w4,w3")
    ap.add_argument(
        "--per-append",
        action="store_true",
        help="also run W2 and W4 with guard='per-append' (the conditional batch "
        "per append; keys w2_hosted_perappend, w4_hosted_perappend)",
    )
    args = ap.parse_args()
    workloads = args.workloads.split(",")

    on = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace)
    off = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace, fencing=False)
    per_append = CassandraConfig.from_contact(
        args.contact, keyspace=args.keyspace, guard="per-append"
    )
    r_guard = {"on": on.effective_guard, "off": off.effective_guard}
    t0 = time.perf_counter()
    init_ray(f"peer-{uuid.uuid4().hex[:6]}")
    r: dict[str, Any] = {"system": "raysource", "loadavg_start": os.getloadavg(), "guards": r_guard}
    boot = System.start(
        f"peerboot{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(on, create_schema=True),
        types=[PEER],
    )
    boot.entity(PEER, "boot").ask(Add(PAYLOAD), timeout=120)  # schema + first connect
    boot.shutdown()
    r["startup_s"] = time.perf_counter() - t0
    r["limits"] = limits(on, args.limit_samples)

    def run(
        key: str, config: CassandraConfig, placement: str, body: Callable[[System], Any]
    ) -> None:
        system = start(config, placement)
        try:
            r[key] = body(system)
        except Exception as exc:  # noqa: BLE001 - one failed workload does not end the round
            r[key] = {"error": repr(exc)[:500]}
        finally:
            system.shutdown()
        print(f"  raysource {key}: {json.dumps(r[key])[:200]}", flush=True)

    if "w1" in workloads:
        for key, config, placement in (
            ("w1_hosted_on", on, "hosted"),
            ("w1_dedicated_on", on, "dedicated"),
            ("w1_hosted_off", off, "hosted"),
        ):
            run(key, config, placement, lambda s: w1(s, args.callers, args.warmup, args.seconds))
    if "w2" in workloads:

        def w2_mem(s: System) -> dict:
            out = w2(s, args.entities, args.callers, args.warmup, args.seconds)
            out["memory"] = tree_rss()
            return out

        run("w2_hosted_on", on, "hosted", w2_mem)
        run(
            "w2_hosted_off",
            off,
            "hosted",
            lambda s: w2(s, args.entities, args.callers, args.warmup, args.seconds),
        )
        if args.per_append:
            run(
                "w2_hosted_perappend",
                per_append,
                "hosted",
                lambda s: w2(s, args.entities, args.callers, args.warmup, args.seconds),
            )
    if "w4" in workloads:
        for key, config, placement in (
            ("w4_hosted_on", on, "hosted"),
            ("w4_hosted_off", off, "hosted"),
            ("w4_dedicated_on", on, "dedicated"),
        ):
            run(key, config, placement, lambda s: w4(s, args.sequential))
        if args.per_append:
            run("w4_hosted_perappend", per_append, "hosted", lambda s: w4(s, args.sequential))
    if "w3" in workloads:
        entity = f"recovery-{uuid.uuid4().hex[:8]}"

        def hosted(s: System) -> dict:
            fill(s, entity, args.recovery_events)
            ms = w3_hosted(s, entity, args.recoveries)
            return {
                "events": args.recovery_events,
                "first_command_ms": ms,
                "median_ms": statistics.median(ms),
            }

        def dedicated(s: System) -> dict:
            ms = w3_dedicated(s, entity, args.recoveries)
            return {
                "events": args.recovery_events,
                "first_command_ms": ms,
                "median_ms": statistics.median(ms),
            }

        run("w3_hosted_on", on, "hosted", hosted)
        run("w3_dedicated_on", on, "dedicated", dedicated)
    r["memory_end"] = tree_rss()
    r["loadavg_end"] = os.getloadavg()
    r["wall_s"] = time.perf_counter() - t0
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
