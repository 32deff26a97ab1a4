"""Sharding benchmark: what the coordinator and the resolve path cost, measured in one run.

Prints, beside each runtime figure, the limit it is compared with:

* resolve latency, cold (coordinator hop + region + actor creation + recovery) vs cached (the
  ref's cached handle) vs a bare Ray actor creation + first call;
* the coordinator hop (``home()`` for an allocated shard) vs a direct actor call (``ping``);
* an ask through a cached ref vs a raw actor call of the same host (``handle.ask.remote``);
* time from a node's removal until all its entities serve again, for N entities
  (a 3-node ``ray.cluster_utils.Cluster``; skipped with ``--no-node-loss``).

    python -m benchmarks.sharding_bench --contact 127.0.0.1:9042
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

import ray

from benchmarks.quiet import Held, expected_raylet_deaths
from raysource.devnode.select import select_cassandra
from raysource.examples.ledger import LEDGER, Append, GetBalance
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec
from raysource.sharding.coordinator import CoordinatorSettings
from raysource.sharding.ray_nodes import FAST_HEALTH_CHECKS, dead_node_detection_s
from raysource.sharding.system import System


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(s),
        "p99_ms": 1000 * s[min(len(s) - 1, int(0.99 * len(s)))],
        "n": len(s),
    }


@ray.remote(num_cpus=0.01)
class _Bare:
    def ping(self) -> str:
        return "pong"


def resolve_costs(system: System, n_cold: int, n_calls: int) -> dict:
    out: dict = {}
    cold, bare_create = [], []
    refs = []
    for _i in range(n_cold):
        ref = system.entity(LEDGER, f"cold-{uuid.uuid4().hex[:8]}")
        t = time.perf_counter()
        ref.ask(GetBalance())
        cold.append(time.perf_counter() - t)
        refs.append(ref)
        t = time.perf_counter()
        a = _Bare.remote()
        ray.get(a.ping.remote())
        bare_create.append(time.perf_counter() - t)
        ray.kill(a)
    out["cold_resolve_and_first_ask"] = _ms(cold)
    out["bare_actor_create_and_call"] = _ms(bare_create)

    ref = refs[0]
    handle = ref.actor
    cached, raw, direct, hop = [], [], [], []
    shard = shard_of(ref.entity_id, LEDGER.number_of_shards)
    for _ in range(n_calls):
        t = time.perf_counter()
        ref.ask(GetBalance())
        cached.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(handle.ask.remote(GetBalance()))
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(handle.ping.remote())
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(system.coordinator.home.remote("ledger", shard))
        hop.append(time.perf_counter() - t)
    out["cached_ref_ask"] = _ms(cached)
    out["raw_handle_ask"] = _ms(raw)
    out["direct_actor_call"] = _ms(direct)
    out["coordinator_hop"] = _ms(hop)
    return out


def node_loss(contact: tuple[str, int], n_entities: int, keyspace: str, log_file: Path) -> dict:
    """Time until the entities of a node removed on purpose serve again (a 3-node local
    cluster). Ray's reports of the removed raylet's end go to ``log_file``, not the terminal
    (see :mod:`benchmarks.quiet`)."""
    with expected_raylet_deaths("removes one of 3 local Ray nodes (node loss)", log_file) as held:
        return _node_loss(contact, n_entities, keyspace, held)


def _node_loss(contact: tuple[str, int], n_entities: int, keyspace: str, held: Held) -> dict:
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, namespace=f"bench-{uuid.uuid4().hex[:6]}", log_to_driver=False)
    config = CassandraConfig(contact_points=(contact[0],), port=contact[1], keyspace=keyspace)
    system = System.start(
        "benchloss",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[LEDGER],
        placement={"ledger": "hosted"},
        coordinator_settings=CoordinatorSettings(poll_interval=0.5),
    )
    try:
        refs = {f"e{i}": system.entity(LEDGER, f"e{i}") for i in range(n_entities)}
        for eid, ref in refs.items():
            ref.ask(Append(f"{eid}-0"))
        alloc = system.allocation()
        victim = max(workers, key=lambda w: len(alloc.get(w.node_id, [])))
        on_victim = [
            eid
            for eid in refs
            if ray.get(
                system.coordinator.home.remote("ledger", shard_of(eid, LEDGER.number_of_shards))
            )
            == victim.node_id
        ]
        held.expect_node(victim.node_id)
        t0 = time.perf_counter()  # includes Ray noticing the node is gone
        c.remove_node(victim, allow_graceful=False)
        removed_s = time.perf_counter() - t0
        serving: dict[str, float] = {}

        def probe(eid: str) -> None:
            while True:
                try:
                    refs[eid].ask(Append(f"{eid}-after-{uuid.uuid4().hex[:4]}"), timeout=20)
                    serving[eid] = time.perf_counter() - t0
                    return
                except Exception:
                    time.sleep(0.1)

        threads = [threading.Thread(target=probe, args=(e,)) for e in on_victim]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        return {
            "entities": n_entities,
            "entities_on_lost_node": len(on_victim),
            "all_serving_again_s": max(serving.values()) if serving else 0.0,
            "first_serving_again_s": min(serving.values()) if serving else 0.0,
            "health_check_detection_s": dead_node_detection_s(FAST_HEALTH_CHECKS),
            "remove_node_call_s": removed_s,
        }
    finally:
        system.shutdown(timeout=10)
        ray.shutdown()
        c.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default=os.environ.get("RAYSOURCE_CASSANDRA"))
    ap.add_argument("--cold", type=int, default=8)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--entities", type=int, default=24)
    ap.add_argument("--no-node-loss", action="store_true")
    ap.add_argument("--out", default="results/sharding_bench.json")
    args = ap.parse_args()

    source = select_cassandra(args.contact, say=print)
    keyspace = f"bench_sharding_{uuid.uuid4().hex[:6]}"
    results: dict = {}
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            namespace=f"bench-{uuid.uuid4().hex[:6]}",
        )
        config = CassandraConfig(contact_points=(source.host,), port=source.port, keyspace=keyspace)
        system = System.start(
            "bench", store=StoreSpec.for_cassandra(config, create_schema=True), types=[LEDGER]
        )
        try:
            results["resolve"] = resolve_costs(system, args.cold, args.calls)
        finally:
            system.shutdown()
            ray.shutdown()
        if not args.no_node_loss:
            results["node_loss"] = node_loss(
                (source.host, source.port),
                args.entities,
                keyspace,
                Path(args.out).with_name("sharding_bench_raylet_reports.log"),
            )
    finally:
        source.release()

    r = results["resolve"]
    print("\nsharding benchmark (2 cores; compare ratios, not absolute times)")
    print(f"{'figure':38} {'p50 ms':>9} {'p99 ms':>9}   limit / ratio")
    rows = [
        (
            "cold resolve + first ask (dedicated)",
            "cold_resolve_and_first_ask",
            "bare_actor_create_and_call",
        ),
        ("cached ref ask", "cached_ref_ask", "raw_handle_ask"),
        ("raw handle ask", "raw_handle_ask", "direct_actor_call"),
        ("coordinator hop (home of a shard)", "coordinator_hop", "direct_actor_call"),
    ]
    for label, key, limit in rows:
        fig, lim = r[key], r[limit]
        print(
            f"{label:38} {fig['p50_ms']:9.2f} {fig['p99_ms']:9.2f}   vs {limit} "
            f"{lim['p50_ms']:.2f} ms -> x{fig['p50_ms'] / lim['p50_ms']:.2f}"
        )
    if "node_loss" in results:
        nl = results["node_loss"]
        print(
            f"node loss: {nl['entities_on_lost_node']} of {nl['entities']} entities on the "
            f"lost node; all serving again after {nl['all_serving_again_s']:.2f} s "
            f"(first after {nl['first_serving_again_s']:.2f} s; the removal itself took "
            f"{nl['remove_node_call_s']:.2f} s; Ray's dead-node detection configured at "
            f"~{nl['health_check_detection_s']} s)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
