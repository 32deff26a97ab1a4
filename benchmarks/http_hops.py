"""Where an HTTP request's time goes: CPU milliseconds per request in every process it
crosses (Serve proxy, Serve replica, host actor, raylet/GCS, Cassandra, this client), beside
the same command sent through a reference from this driver, in alternating blocks of one run.

CPU time (``/proc/<pid>/stat`` utime + stime) is what a request costs a process whatever else
the machine runs, so the figures hold on a shared, loaded box where wall-clock ones do not.
The client (this driver) is measured too: its HTTP client and its reference calls are part of
each path's price.

    python -m benchmarks.http_hops [--contact 127.0.0.1:9042] [--n 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import uuid
from collections import Counter
from dataclasses import replace

import httpx
import ray

from benchmarks.peer.profile import cmdline, cpu_seconds
from benchmarks.peer.raysource_side import _rss_and_children
from raysource.examples.seats import SHOW, CreateShow, ReserveSeat, seat_label
from raysource.examples.seats_service import seats_app
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec
from raysource.service.deployment import ServiceSpec, run_service
from raysource.sharding.system import System, unique_system_name

ROLES = (
    ("Serve proxy", "ProxyActor"),
    ("Serve replica", "ServeReplica"),
    ("host actor", "_HostActor"),
    ("host actor", "_PooledHost"),
    ("raylet + GCS", "raylet"),
    ("raylet + GCS", "gcs_server"),
    ("other Ray workers", "ray::"),
)


def roles() -> dict[int, str]:
    """pid -> role, for this driver's process tree and the Cassandra node."""
    procs = _rss_and_children()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        cmd = cmdline(pid)
        role = "client (this driver)" if pid == os.getpid() else None
        for name, needle in ROLES:
            if role is None and needle in cmd:
                role = name
        out[pid] = role or "other Ray processes"
    for pid in procs:
        if "CassandraDaemon" in cmdline(pid):
            out[pid] = "Cassandra (shared node)"
    return out


def cpu_by_role(pids: dict[int, str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for pid, role in pids.items():
        c[role] += cpu_seconds(pid)
    c["client (this driver)"] = sum(os.times()[:2])  # this process, all threads
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="bench_hops")
    ap.add_argument("--n", type=int, default=150, help="requests per block")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"hops-{uuid.uuid4().hex[:6]}",
    )
    config = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace)
    store = StoreSpec.for_cassandra(config, create_schema=True)
    name = unique_system_name("hops")
    namespace = ray.get_runtime_context().namespace
    agg = replace(SHOW, number_of_shards=4)
    system = System.start(name, store=store, types=[agg], namespace=namespace)
    url = run_service(seats_app(ServiceSpec(name, store, (agg,), namespace)), name="hops", port=0)
    shows = [f"{name}-show-{i}" for i in range(4)]
    refs = {s: system.entity(agg, s) for s in shows}
    seat = itertools.count()
    totals: dict[str, Counter[str]] = {"http": Counter(), "refs": Counter()}
    count = Counter()
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for s in shows:
                refs[s].ask(CreateShow(100_000), timeout=60)
                http.get(f"/shows/{s}").raise_for_status()
            pids = roles()

            def block(via: str) -> None:
                before = cpu_by_role(pids)
                for s in itertools.islice(itertools.cycle(shows), args.n):
                    label = seat_label(next(seat))
                    if via == "http":
                        http.post(
                            f"/shows/{s}/reservations", json={"seat": label, "customer": "b"}
                        ).raise_for_status()
                    else:
                        refs[s].ask(ReserveSeat(label, "b"), timeout=60)
                after = cpu_by_role(pids)
                totals[via].update({k: after[k] - before[k] for k in after})
                count[via] += args.n

            for _ in range(args.rounds):
                block("refs")
                block("http")
    finally:
        from ray import serve

        serve.shutdown()
        system.shutdown()
        ray.shutdown()
    load = os.getloadavg()[0]
    print(f"CPU ms per reservation, by process ({count['http']} per path; load {load:.1f})")
    print(f"{'process':<26}{'refs':>9}{'http':>9}{'added':>9}")
    keys = sorted(set(totals["http"]) | set(totals["refs"]))
    for k in keys:
        r = totals["refs"][k] * 1000 / count["refs"]
        h = totals["http"][k] * 1000 / count["http"]
        print(f"{k:<26}{r:>9.2f}{h:>9.2f}{h - r:>9.2f}")
    r_all = sum(totals["refs"].values()) * 1000 / count["refs"]
    h_all = sum(totals["http"].values()) * 1000 / count["http"]
    print(f"{'total':<26}{r_all:>9.2f}{h_all:>9.2f}{h_all - r_all:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
