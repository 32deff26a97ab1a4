"""Warm pool benchmark: first touch of N dedicated aggregates through a real ``System`` on Ray
and Cassandra, without a pool (every activation starts a host actor process) and with a warm
pool of N pre-started hosts per node (``System.start(..., warm_pool=N)``), side by side in one
run (alternating order per round), so the ratio holds on a shared, loaded machine.

Per round and mode: a fresh system; with the pool, wait until it holds N idle hosts (that is
the pool's own, ahead-of-time cost, not timed); then N never-written aggregates get one command
each, all at once, and the wall time until every reply is timed. Reported: the medians, their
ratio, the pool's counters (taken vs misses: how many first touches a pooled host served) and
the memory of one idle pool host (RSS and USS: what each pooled process costs while it waits).

Usage: python -m benchmarks.pool_bench [--contact 127.0.0.1:9042] [--n 8] [--rounds 3]
(``python -m benchmarks.activation_bench --pool`` runs it too.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from benchmarks import ray_start
from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec
from raysource.sharding.errors import ShardingError
from raysource.sharding.system import System, unique_system_name

DEDICATED = replace(LEDGER, name="pledger", placement="dedicated")


def _wait_idle(system: System, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        try:
            (info,) = system.pool_info(timeout=120).values()
        except ray.exceptions.GetTimeoutError:  # the region's own process is still starting
            continue
        if info is not None and info["idle"] >= size:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pool never filled: {info}")
        time.sleep(0.2)


async def _touch_all(system: System, ids: list[str]) -> None:
    refs = [system.entity(DEDICATED, e) for e in ids]
    await asyncio.gather(
        *(r.ask_async(Append(f"t-{e}", 1), timeout=300) for r, e in zip(refs, ids))
    )


def one_round(store: StoreSpec, n: int, pool: int) -> dict[str, Any]:
    for attempt in range(3):  # a coordinator's process start can exceed 30 s on a loaded box
        try:
            system = System.start(
                unique_system_name("poolb"),
                store=store,
                types=[DEDICATED],
                warm_pool=pool,
                timers=None,
            )
            break
        except ShardingError:
            if attempt == 2:
                raise
    out: dict[str, Any] = {}
    try:
        if pool:
            before = _wait_idle(system, pool)
            name = before["idle_names"][0]
            info = ray.get(ray.get_actor(name, namespace=system.spec.namespace).info.remote())
            out["idle_rss_mib"] = info.get("rss", 0) / 2**20
            out["idle_uss_mib"] = info.get("uss", 0) / 2**20
        else:  # the region exists in both modes before the clock starts
            system.pool_info(timeout=120)
        ids = [f"{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
        t0 = time.perf_counter()
        asyncio.run(_touch_all(system, ids))
        out["first_touch_s"] = time.perf_counter() - t0
        if pool:
            (after,) = system.pool_info(timeout=120).values()
            assert after is not None
            out["taken"], out["misses"] = after["taken"], after["misses"]
    finally:
        system.shutdown()
    return out


def run(contact: str, n: int, rounds: int, out: str | None = None) -> dict[str, Any]:
    ray_start.init(
        f"poolb-{uuid.uuid4().hex[:6]}",
        include_dashboard=False,
        log_to_driver=False,
    )
    config = CassandraConfig.from_contact(contact, keyspace="bench_pool")
    store = StoreSpec.for_cassandra(config, create_schema=True)
    results: dict[int, list[dict[str, Any]]] = {0: [], n: []}
    try:
        one_round(store, 2, 0)  # warm-up: schema, prepared statements
        for r in range(rounds):
            for pool in (0, n) if r % 2 == 0 else (n, 0):
                results[pool].append(one_round(store, n, pool))
                print(f"round {r} pool={pool}: {results[pool][-1]}", flush=True)
    finally:
        ray.shutdown()
    cold = statistics.median(x["first_touch_s"] for x in results[0])
    warm = statistics.median(x["first_touch_s"] for x in results[n])
    figures = {
        "aggregates": n,
        "rounds": rounds,
        "first_touch_s": {"no_pool": cold, "pool": warm, "ratio": cold / warm},
        "pool_taken": [x["taken"] for x in results[n]],
        "pool_misses": [x["misses"] for x in results[n]],
        "idle_host_rss_mib": statistics.median(x["idle_rss_mib"] for x in results[n]),
        "idle_host_uss_mib": statistics.median(x["idle_uss_mib"] for x in results[n]),
    }
    print(
        f"first touch of {n} dedicated aggregates (median of {rounds}): no pool {cold:.2f} s, "
        f"warm pool of {n} {warm:.2f} s, ratio {cold / warm:.2f}x; pooled hosts taken "
        f"{figures['pool_taken']}, misses {figures['pool_misses']}; one idle pool host "
        f"RSS {figures['idle_host_rss_mib']:.0f} MiB, USS {figures['idle_host_uss_mib']:.0f} MiB"
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contact", default="127.0.0.1:9042")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    run(args.contact, args.n, args.rounds, args.out)


if __name__ == "__main__":
    main()
