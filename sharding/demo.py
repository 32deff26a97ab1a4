"""``raysource demo`` / ``make demo``: the main job.

Seat reservations under contention on local Ray with a real Cassandra: 200 shows hosted in 8
shard actors, 2 load clients (Ray actors) pipelining 8 commands each, Zipf-popular shows and
seats (popular shows sell out, so later reservations are rejected), some cancellations and
``GetShow`` queries. Prints where Cassandra comes from, progress, the summary (commands/s,
p50/p95/p99, accepted vs rejected), the consistency check and where the JSON + PNG report is;
stops everything it started (Ray, the system's actors, a Cassandra node it started unless
``keep``).
"""

from __future__ import annotations

from sharding.loadtest import LoadTestParams, run_standalone

__all__ = ["DEMO_PARAMS", "run_demo"]

# 8 shards, not the type's 32: a hosted shard is one Ray actor process (~0.5 s, ~40 MB to
# start), and the demo targets a 2-core laptop finishing in about a minute.
DEMO_PARAMS = LoadTestParams(workload="seats", entities=200, clients=2, duration_s=20.0,
                             placement="hosted", shards=8, window=8)


def run_demo(seconds: float = 20.0, contact: str | None = None, keep: bool = False) -> int:
    """Run the demo for ``seconds`` of load; returns the process exit code (0: the
    consistency check passed and nothing it started is left running)."""
    from dataclasses import replace

    print(f"raysource demo: seat reservations, {DEMO_PARAMS.entities} shows, "
          f"{DEMO_PARAMS.clients} clients, {seconds:g} s of load")
    return run_standalone(replace(DEMO_PARAMS, duration_s=seconds), contact=contact, keep=keep)
