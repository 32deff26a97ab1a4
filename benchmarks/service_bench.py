"""The HTTP layer's cost: the seat service (Ray Serve proxy -> replica -> reference -> host)
beside direct reference calls from the same driver, to the same aggregates, in one run.

    python -m benchmarks.service_bench --contact 127.0.0.1:9042 [--rounds 5] [--out F.json]

Rows, each measured in alternating rounds (refs, HTTP, refs, HTTP, ...) so a busy machine's
drift hits both alike:
* sequential query: ``GetShow`` (no journal write) one at a time — the pure per-request
  overhead of HTTP + Serve over a reference call;
* sequential reserve: one ``ReserveSeat`` at a time (one journal write each);
* concurrent reserve: ``--concurrency`` in flight (``ask_async`` vs an httpx AsyncClient).
Each row prints p50/p99 (ms) and commands/s for both paths and the HTTP / refs ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import ray

from benchmarks.quiet import expected_reports
from raysource.examples.seats import SHOW, CreateShow, GetShow, ReserveSeat, seat_label
from raysource.examples.seats_service import seats_app
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec
from raysource.service.deployment import ServiceSpec, run_service
from raysource.sharding.system import System, unique_system_name


def _figures(latencies_ms: list[float], elapsed_s: float) -> dict[str, float]:
    arr = np.asarray(latencies_ms)
    p50, p99 = np.percentile(arr, [50, 99])
    return {
        "n": int(arr.size),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "per_s": round(arr.size / elapsed_s, 1),
    }


HALL = 100_000  # seats per show: enough fresh seats for every round


class _Seats:
    """Fresh (show, seat) pairs: never rejected, so every reserve writes one event."""

    def __init__(self, shows: list[str]) -> None:
        self._pairs = ((s, seat_label(i)) for i in range(HALL) for s in shows)

    def next(self) -> tuple[str, str]:
        return next(self._pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="bench_service")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=60, help="sequential calls per round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0, help="concurrent round length")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"bench-{uuid.uuid4().hex[:6]}",
    )
    config = CassandraConfig.from_contact(args.contact, keyspace=args.keyspace)
    store = StoreSpec.for_cassandra(config, create_schema=True)
    name = unique_system_name("sb")
    namespace = ray.get_runtime_context().namespace
    agg = replace(SHOW, number_of_shards=4)
    system = System.start(name, store=store, types=[agg], namespace=namespace)
    url = run_service(seats_app(ServiceSpec(name, store, (agg,), namespace)), name="bench", port=0)
    shows = [f"{name}-show-{i}" for i in range(8)]
    seats = _Seats(shows)
    refs = {s: system.entity(agg, s) for s in shows}
    rows: dict[str, dict[str, list[float]]] = {}
    elapsed: dict[str, dict[str, float]] = {}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for s in shows:  # size and activate every show on both paths (not timed)
                refs[s].ask(CreateShow(HALL), timeout=60)
                http.get(f"/shows/{s}").raise_for_status()

            def timed(row: str, via: str, call) -> None:
                lat = rows.setdefault(row, {}).setdefault(via, [])
                t_all = time.perf_counter()
                for s in itertools.islice(itertools.cycle(shows), args.per_round):
                    t0 = time.perf_counter()
                    call(s)
                    lat.append((time.perf_counter() - t0) * 1000)
                spent = elapsed.setdefault(row, {})
                spent[via] = spent.get(via, 0.0) + time.perf_counter() - t_all

            def reserve_ref(_s: str) -> None:
                show, seat = seats.next()
                refs[show].ask(ReserveSeat(seat, "bench"), timeout=60)

            def reserve_http(_s: str) -> None:
                show, seat = seats.next()
                http.post(
                    f"/shows/{show}/reservations", json={"seat": seat, "customer": "bench"}
                ).raise_for_status()

            for _ in range(args.rounds):
                timed("sequential query", "refs", lambda s: refs[s].ask(GetShow(), timeout=60))
                timed(
                    "sequential query", "http", lambda s: http.get(f"/shows/{s}").raise_for_status()
                )
                timed("sequential reserve", "refs", reserve_ref)
                timed("sequential reserve", "http", reserve_http)
        for _ in range(args.rounds):
            for via in ("refs", "http"):
                lat, took = asyncio.run(_concurrent(via, url, refs, args, seats))
                rows.setdefault("concurrent reserve", {}).setdefault(via, []).extend(lat)
                spent = elapsed.setdefault("concurrent reserve", {})
                spent[via] = spent.get(via, 0.0) + took
    finally:
        from ray import serve

        log = Path(args.out or "results/service_bench.json").with_name(
            "service_bench_ray_reports.log"
        )
        with expected_reports(
            "shuts Ray Serve down (Serve kills its controller)",
            log,
            patterns=("ServeController.graceful_shutdown failed",),
        ):
            serve.shutdown()
            system.shutdown()
            ray.shutdown()
    result: dict[str, dict] = {}
    print(f"{'row':<22}{'via':<6}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'per s':>9}")
    for row, by_via in rows.items():
        result[row] = {via: _figures(lat, elapsed[row][via]) for via, lat in by_via.items()}
        for via, f in result[row].items():
            print(
                f"{row:<22}{via:<6}{f['n']:>6}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}"
                f"{f['per_s']:>9.1f}"
            )
        r, h = result[row]["refs"], result[row]["http"]
        result[row]["http_over_refs"] = {
            "p50_ms_added": round(h["p50_ms"] - r["p50_ms"], 2),
            "throughput_ratio": round(h["per_s"] / r["per_s"], 3),
        }
        print(
            f"{'':<22}HTTP adds {h['p50_ms'] - r['p50_ms']:.2f} ms at p50; "
            f"throughput x{h['per_s'] / r['per_s']:.2f} of refs"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


async def _concurrent(
    via: str, url: str, refs: dict, args: argparse.Namespace, seats: _Seats
) -> tuple[list[float], float]:
    lat: list[float] = []
    deadline = time.perf_counter() + args.seconds
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                show, seat = seats.next()
                t0 = time.perf_counter()
                if via == "refs":
                    await refs[show].ask_async(ReserveSeat(seat, "bench"), timeout=60)
                else:
                    (
                        await http.post(
                            f"/shows/{show}/reservations", json={"seat": seat, "customer": "bench"}
                        )
                    ).raise_for_status()
                lat.append((time.perf_counter() - t0) * 1000)

        t_all = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(args.concurrency)])
    return lat, time.perf_counter() - t_all


if __name__ == "__main__":
    raise SystemExit(main())
