"""Where a command's time goes on raysource, under one peer-benchmark workload (W2 or W4).

Runs the workload on its own local Ray instance for ``--seconds`` and, over a window after the
warm-up, (1) reads the CPU time of every process involved (this driver, the host actors, the
raylet, GCS, other Ray workers, and the Cassandra node) and divides it by the commands answered
in the window: CPU ms per command by process; (2) samples the driver and the busiest host actors
with py-spy (``pip install py-spy``; needs ptrace rights, e.g. root) and attributes the samples
to categories (Ray call machinery, asyncio, ordering buffer, entity core, journal, Cassandra
driver, serialization, ...), self time by the innermost frame that names a category.

  python -m benchmarks.peer.profile --workload w4 --guard on --seconds 30
  python -m benchmarks.peer.profile --workload w2 --guard on --seconds 40

Writes the folded stacks and a JSON summary into ``results/peer-profile-<stamp>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import ray

from benchmarks.peer import raysource_side as side
from benchmarks.peer.aggregate import PAYLOAD, PEER, Add
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.actors import coalesce
from raysource.sharding.system import System

TICK = os.sysconf("SC_CLK_TCK")

# (category, substring of a frame's "function (file:line)"), first match from the leaf up
CATEGORIES = [
    ("serialization (msgspec, raysource serializer)", ("msgspec", "journal/serialization.py")),
    (
        "ray serialization (pickle of args/replies)",
        ("ray/_private/serialization.py", "cloudpickle", "pickle"),
    ),
    # the driver's own frames (not raysource's journal/cassandra/ modules)
    ("cassandra-driver (encode, io, callbacks)", ("site-packages/cassandra/",)),
    (
        "raysource journal (append, batch building, session)",
        ("journal/cassandra/", "journal/api.py"),
    ),
    ("raysource ordering buffer", ("runtime/ordering.py",)),
    (
        "raysource entity core (mailbox, flush, decide)",
        (
            "runtime/core.py",
            "runtime/flush.py",
            "runtime/append.py",
            "runtime/core_timers.py",
            "runtime/aggregate.py",
            "benchmarks/peer/aggregate.py",
        ),
    ),
    (
        "raysource host (routing, activation, bookkeeping)",
        ("runtime/host.py", "runtime/metrics.py"),
    ),
    (
        "raysource host actor / metrics glue",
        ("runtime/actors/host_actor.py", "runtime/actors/ray_metrics.py"),
    ),
    (
        "raysource refs (caller side)",
        (
            "runtime/actors/refs.py",
            "runtime/actors/coalesce.py",
            "runtime/actors/protocol.py",
            "sharding/system.py",
        ),
    ),
    ("ray core worker (submit, execute, reply)", ("ray/",)),
    ("asyncio event loop", ("asyncio/",)),
    ("benchmark harness", ("benchmarks/peer",)),
]


def category(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def analyse(folded: Path) -> dict:
    """Self-time categories, top leaf functions and top inclusive raysource functions."""
    cats: Counter = Counter()
    leaves: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack_s, _, n_s = line.rpartition(" ")
        if not stack_s:
            continue
        n = int(n_s)
        frames = stack_s.split(";")
        if frames and frames[0].startswith(("thread", "process")):
            frames = frames[1:]
        total += n
        cats[category(frames)] += n
        leaves[_short(frames[-1])] += n
        for f in set(frames):
            if any(k in f for k in ("runtime/", "journal/", "sharding/")):
                inclusive[_short(f)] += n

    def pct(c: Counter) -> dict:
        return {k: round(100 * v / max(1, total), 1) for k, v in c.most_common(15)}

    return {
        "samples": total,
        "self_by_category_pct": pct(cats),
        "top_leaf_functions_pct": pct(leaves),
        "top_inclusive_raysource_functions_pct": pct(inclusive),
    }


def _short(frame: str) -> str:
    func, _, loc = frame.partition(" (")
    path = loc.rstrip(")")
    parts = path.split("/")
    return f"{func} ({'/'.join(parts[-2:])})"


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu(pids: list[int]) -> Counter:
    """CPU seconds so far of the threads of ``pids``, summed by thread name (``comm``): the
    Python thread vs Ray's native threads vs the Cassandra driver's I/O thread."""
    out: Counter = Counter()
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = "main (python)" if tid == str(pid) else name.rstrip("0123456789")
            out[name] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def classify() -> dict[int, str]:
    """pid -> role for this driver's process tree and the Cassandra node."""
    procs = side._rss_and_children()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    roles, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        cmd = cmdline(pid)
        roles[pid] = (
            "driver"
            if pid == os.getpid()
            else "host actors"
            if "_HostActor" in cmd
            else "raylet"
            if "raylet" in cmd
            else "gcs_server"
            if "gcs_server" in cmd
            else "py-spy"
            if "py-spy" in cmd
            else "other ray processes"
        )
    for pid in procs:
        if "CassandraDaemon" in cmdline(pid):
            roles[pid] = "cassandra node (shared with other users)"
    return roles


# --------------------------------------------------------------------------- the load


class Load:
    """The workload on a background event loop; ``answered`` counts replies."""

    def __init__(self, system: System, workload: str, entities: int, callers: int) -> None:
        self.system, self.workload = system, workload
        self.type = system.spec.types[0]
        self.entities, self.callers = entities, callers
        self.answered = self.errors = 0
        self.stop = self.go = False
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        if self.workload == "w4":
            ref = self.system.entity(self.type, f"seq-{uuid.uuid4().hex[:8]}")
            while not self.stop:
                await self._one(ref)
            return
        ids = [f"p-{uuid.uuid4().hex[:6]}-{i}" for i in range(self.entities)]
        first = [self.system.entity(self.type, e) for e in ids]
        await asyncio.gather(*(self._one(r) for r in first))
        self.hosts = {}
        for r in first:  # every host actor (for its journal-request counters)
            h = await asyncio.to_thread(lambda r=r: r.actor)
            self.hosts[h._actor_id.hex()] = h
        self.ready_at = time.monotonic()
        while not self.go:  # the driver measures the idle tree meanwhile
            await asyncio.sleep(0.05)
        refs: list[dict] = [{} for _ in range(self.callers)]
        import random

        rng = random.Random(2)

        async def caller(c: int) -> None:
            while not self.stop:
                e = ids[rng.randrange(len(ids))]
                ref = refs[c].get(e) or refs[c].setdefault(e, self.system.entity(self.type, e))
                await self._one(ref)

        await asyncio.gather(*(caller(c) for c in range(self.callers)))

    async def _one(self, ref) -> None:  # noqa: ANN001
        try:
            await ref.ask_async(Add(PAYLOAD), timeout=30)
            self.answered += 1
        except Exception:  # noqa: BLE001 - counted; the load goes on
            self.errors += 1


# --------------------------------------------------------------------------- W4 decomposition


async def _append_p50(config: CassandraConfig, n: int) -> float:
    """p50 of one-event appends through raysource's Cassandra journal, from this process."""
    from datetime import datetime

    from raysource.journal.api import StoredEvent
    from raysource.journal.cassandra.journal import CassandraJournal

    journal = await CassandraJournal.connect(config)
    pid, payload = f"peer|append-{uuid.uuid4().hex[:8]}", ('{"data":"' + PAYLOAD + '"}').encode()
    times = []
    try:
        for i in range(1, n + 21):
            ev = StoredEvent(pid, i, payload, "peer.Added#1", 1, datetime.now(UTC), "w")
            t = time.perf_counter()
            await journal.append([ev])
            if i > 20:
                times.append(time.perf_counter() - t)
    finally:
        await journal.close()
    return side.pct(times, 50) * 1000


def decompose(a: argparse.Namespace) -> dict:
    """One sequential caller, step by step, all in this run: the bare Ray call (blocking and
    awaited), raysource's read-only call through the host (``state``: refs + host actor + host,
    no journal), the write (``ask``, blocking and awaited), and one append through the journal
    from the driver; the host's own mean journal-write time from its metrics."""
    out: dict = {}
    n = a.samples
    bare = side.Bare.remote()
    ray.get(bare.ping.remote())

    def timed(fn) -> float:  # noqa: ANN001
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return side.pct(times, 50) * 1000

    async def timed_async(fn) -> float:  # noqa: ANN001
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await fn()
            times.append(time.perf_counter() - t)
        return side.pct(times, 50) * 1000

    out["bare_ray_get_p50_ms"] = timed(lambda: ray.get(bare.ping.remote()))
    out["bare_await_p50_ms"] = asyncio.run(timed_async(lambda: bare.ping.remote()))
    for guard in ("on", "off"):
        config = CassandraConfig.from_contact(a.contact, keyspace=a.keyspace, fencing=guard == "on")
        out[f"journal_append_p50_ms_guard_{guard}"] = asyncio.run(_append_p50(config, n))
        system = side.start(config, a.placement)
        try:
            ref = system.entity(system.spec.types[0], f"dec-{uuid.uuid4().hex[:8]}")
            ref.ask(Add(PAYLOAD), timeout=60)
            m0 = ray.get(ref.actor.info.remote())["metrics"]
            out[f"ask_p50_ms_guard_{guard}"] = timed(lambda: ref.ask(Add(PAYLOAD), timeout=30))
            m1 = ray.get(ref.actor.info.remote())["metrics"]
            out[f"ask_async_p50_ms_guard_{guard}"] = asyncio.run(
                timed_async(lambda: ref.ask_async(Add(PAYLOAD), timeout=30))
            )
            out[f"state_p50_ms_guard_{guard}"] = timed(lambda: ref.state(timeout=30))
            out[f"host_write_mean_ms_guard_{guard}"] = _mean_write_ms(m0, m1)
        finally:
            system.shutdown()
    ray.kill(bare)
    return out


def _mean_write_ms(before: dict, after: dict) -> float | None:
    """Mean of the host's persist-latency histogram between two metric snapshots."""
    for name, series in after.items():
        if "persist_latency" in name:
            c = sum(v["count"] for v in series.values())
            s_ = sum(v["sum"] for v in series.values())
            old = before.get(name, {})
            c -= sum(v["count"] for v in old.values())
            s_ -= sum(v["sum"] for v in old.values())
            return 1000 * s_ / c if c else None
    return None


def _shared_writes(hosts: list) -> tuple[int, int]:
    """(event-batch requests, appends carried) summed over the host actors (epoch guard)."""
    requests = parts = 0
    for info in ray.get([h.info.remote() for h in hosts]):
        shared = info.get("shared_writes") or {}
        requests += shared.get("requests", 0)
        parts += shared.get("parts", 0)
    return requests, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="peer_raysource")
    ap.add_argument("--workload", choices=("w2", "w4", "w4-decompose"), default="w4")
    ap.add_argument("--samples", type=int, default=300, help="w4-decompose: calls per step")
    ap.add_argument("--guard", choices=("on", "off"), default="on")
    ap.add_argument(
        "--shared-write-partitions",
        type=int,
        default=None,
        help="CassandraConfig.shared_write_partitions (1: one event-batch request per append)",
    )
    ap.add_argument("--placement", choices=("hosted", "dedicated"), default="hosted")
    ap.add_argument("--entities", type=int, default=1000)
    ap.add_argument("--callers", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--seconds", type=float, default=20, help="the measured window")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples/s")
    ap.add_argument("--hosts", type=int, default=3, help="host actors to sample (busiest)")
    ap.add_argument(
        "--shards",
        type=int,
        default=None,
        help="number_of_shards of the aggregate (hosted: host actors; default 32)",
    )
    ap.add_argument(
        "--no-gil",
        dest="gil",
        action="store_false",
        help="sample every thread py-spy sees as running (by default only the "
        "thread holding the GIL: Ray's native threads blocked in C++ would "
        "otherwise count as busy)",
    )
    a = ap.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path("results") / f"peer-profile-{stamp}-{a.workload}-{a.guard}"
    out.mkdir(parents=True, exist_ok=True)

    config = CassandraConfig.from_contact(a.contact, keyspace=a.keyspace, fencing=a.guard == "on")
    if a.shared_write_partitions is not None:
        config = config.with_(shared_write_partitions=a.shared_write_partitions)
    side.init_ray(f"peerprof-{uuid.uuid4().hex[:6]}")
    if a.workload == "w4-decompose":
        summary = {
            "placement": a.placement,
            "loadavg_start": os.getloadavg(),
            **decompose(a),
            "loadavg_end": os.getloadavg(),
        }
        ray.shutdown()
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return
    aggregate = PEER
    if a.shards:  # another type name: the coordinator refuses a new shard count for "peer"
        aggregate = dataclasses.replace(PEER, name=f"peer{a.shards}", number_of_shards=a.shards)
    system = side.start(config, a.placement, aggregate)
    load = Load(system, a.workload, a.entities, a.callers)
    t_start = time.monotonic()
    load.thread.start()
    while a.workload == "w2" and not hasattr(load, "ready_at") and load.thread.is_alive():
        time.sleep(0.5)
    idle = {}
    if a.workload == "w2":  # every aggregate active, no command: what the processes burn idle
        roles = classify()
        c0, i0 = {p: cpu_seconds(p) for p in roles}, time.monotonic()
        time.sleep(5)
        c1, i1 = {p: cpu_seconds(p) for p in roles}, time.monotonic()
        per: Counter = Counter()
        for p, role in roles.items():
            per[role] += c1.get(p, 0) - c0.get(p, 0)
        idle = {r: round(100 * v / (i1 - i0), 1) for r, v in per.most_common()}
    load.go = True
    time.sleep(a.warmup)

    roles = classify()
    busy = sorted(
        (p for p, r in roles.items() if r == "host actors"), key=cpu_seconds, reverse=True
    )[: a.hosts]
    targets = {"driver": os.getpid(), **{f"host-{p}": p for p in busy}}
    spies = {
        name: subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(a.seconds)),
                "--rate",
                str(a.rate),
                "--nonblocking",
                "--full-filenames",
                "--format",
                "raw",
                *(["--gil"] if a.gil else []),
                "-o",
                str(out / f"{name}.folded"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    }
    hosts = list(getattr(load, "hosts", {}).values())
    w0 = _shared_writes(hosts)
    host_pids = [p for p, r in roles.items() if r == "host actors"]
    th0 = {"host actors": thread_cpu(host_pids), "driver": thread_cpu([os.getpid()])}
    co0 = dict(coalesce.STATS)
    cpu0 = {p: cpu_seconds(p) for p in roles}
    n0, t0 = load.answered, time.monotonic()
    time.sleep(a.seconds)
    n1, t1 = load.answered, time.monotonic()
    cpu1 = {p: cpu_seconds(p) for p in roles}
    th1 = {"host actors": thread_cpu(host_pids), "driver": thread_cpu([os.getpid()])}
    ray_calls = coalesce.STATS["calls"] - co0["calls"]
    w1 = _shared_writes(hosts)
    for s in spies.values():
        s.wait(timeout=60)
    memory = side.tree_rss()  # every aggregate active, right after the window (like W2's row)
    load.stop = True
    load.thread.join(timeout=30)
    warm_touch = None
    if a.workload == "w2":  # every host actor runs now: first touch without process starts

        async def touch() -> None:
            await asyncio.gather(
                *(
                    system.entity(system.spec.types[0], f"w-{uuid.uuid4().hex[:8]}").ask_async(
                        Add(PAYLOAD), timeout=120
                    )
                    for _ in range(a.entities)
                )
            )

        t = time.monotonic()
        asyncio.run(touch())
        warm_touch = time.monotonic() - t

    commands = n1 - n0
    per_role: Counter = Counter()
    for p, role in roles.items():
        per_role[role] += cpu1.get(p, 0) - cpu0.get(p, 0)
    summary = {
        "workload": a.workload,
        "guard": a.guard,
        "placement": a.placement,
        "shards": aggregate.number_of_shards,
        "commands": commands,
        "commands_per_s": commands / (t1 - t0),
        "errors": load.errors,
        "window_s": t1 - t0,
        # Ray calls from this driver to host actors (references coalesce concurrent calls)
        "commands_per_ray_call": (n1 - n0) / max(1, ray_calls),
        # the epoch guard's event-batch requests (host-wide: many aggregates per request)
        "event_batch_requests_per_command": (w1[0] - w0[0]) / max(1, n1 - n0),
        "appends_per_event_batch_request": (w1[1] - w0[1]) / max(1, w1[0] - w0[0]),
        "loadavg": os.getloadavg(),
        "cpu_ms_per_command": {
            r: round(1000 * s / max(1, commands), 3) for r, s in per_role.most_common()
        },
        "thread_cpu_ms_per_command": {
            role: {
                name: round(1000 * (v - th0[role].get(name, 0)) / max(1, commands), 3)
                for name, v in th1[role].most_common()
                if v - th0[role].get(name, 0) > 0
            }
            for role in th1
        },
        "cpu_share_of_2_cores_pct": {
            r: round(100 * s / (t1 - t0) / (os.cpu_count() or 1), 1)
            for r, s in per_role.most_common()
        },
        "idle_cpu_pct_of_one_core_before_the_load": idle,
        "first_touch_s": getattr(load, "ready_at", t0) - t_start,
        "first_touch_warm_hosts_s": warm_touch,
        "memory_mib": {k: round(v / 2**20) if k != "processes" else v for k, v in memory.items()},
        "host_actors": sum(r == "host actors" for r in roles.values()),
        "profiles": {
            name: analyse(out / f"{name}.folded")
            for name in targets
            if (out / f"{name}.folded").exists()
        },
    }
    system.shutdown()
    ray.shutdown()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"folded stacks and summary: {out}")


if __name__ == "__main__":
    main()
