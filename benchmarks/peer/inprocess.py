"""The command path without Ray: raysource's host (ordering buffer, entity core, serializer)
driven in this process, on the in-memory journal and on Cassandra, and the Cassandra journal's
append alone. Wall p50 and CPU per command (this process, the driver's I/O thread included),
so the peer benchmark's figures can be split into Ray's share and raysource's own.

  python -m benchmarks.peer.inprocess --contact 127.0.0.1:9042
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime

from benchmarks.peer.aggregate import PAYLOAD, PEER, Add
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.host import AggregateHost
from raysource.snapshots.memory import InMemorySnapshotStore


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def sequential(call, n: int) -> dict:  # noqa: ANN001
    """``n`` awaited calls one after the other: wall p50 (ms) and CPU ms per call."""
    for _ in range(20):
        await call()
    times, c0 = [], time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return {
        "p50_ms": round(pct(times, 50) * 1000, 3),
        "cpu_ms_per_call": round((time.process_time() - c0) * 1000 / n, 3),
    }


async def concurrent(host: AggregateHost, entities: int, callers: int, n: int) -> dict:
    """W2's shape in-process: ``callers`` closed loops over ``entities`` aggregates."""
    ids = [f"c-{uuid.uuid4().hex[:6]}-{i}" for i in range(entities)]
    await asyncio.gather(*(host.ask(e, Add(PAYLOAD)) for e in ids))
    per = n // callers
    c0, t0 = time.process_time(), time.perf_counter()

    async def caller(c: int) -> None:
        cid, seqs = uuid.uuid4().hex, {}  # one caller: its own numbering per aggregate
        for i in range(per):
            e = ids[(c * 7919 + i * 104729) % entities]
            seqs[e] = seqs.get(e, -1) + 1
            await host.ask_ordered(e, cid, seqs[e], Add(PAYLOAD))

    await asyncio.gather(*(caller(c) for c in range(callers)))
    done = per * callers
    return {
        "commands_per_s": round(done / (time.perf_counter() - t0)),
        "cpu_ms_per_command": round((time.process_time() - c0) * 1000 / done, 3),
    }


def make_host(journal) -> AggregateHost:  # noqa: ANN001
    ser = Serialization()
    PEER.register_types(ser)
    return AggregateHost(PEER, journal, InMemorySnapshotStore(), ser)


async def run(a: argparse.Namespace) -> dict:
    out: dict = {"loadavg_start": os.getloadavg()}
    host = make_host(InMemoryJournal())
    ent, cid = "seq", uuid.uuid4().hex
    seq = iter(range(10**9))
    out["memory_host_ask_ordered"] = await sequential(
        lambda: host.ask_ordered(ent, cid, next(seq), Add(PAYLOAD)), a.samples * 5
    )
    out["memory_host_w2_shape"] = await concurrent(host, a.entities, a.callers, a.samples * 10)
    await host.close()
    for guard in ("on", "off"):
        config = CassandraConfig.from_contact(a.contact, keyspace=a.keyspace, fencing=guard == "on")
        journal = await CassandraJournal.connect(config)
        pid, payload = f"peer|inproc-{uuid.uuid4().hex[:8]}", f'{{"data":"{PAYLOAD}"}}'.encode()
        nr = iter(range(1, 10**9))
        out[f"cassandra_append_guard_{guard}"] = await sequential(
            lambda: journal.append(
                [StoredEvent(pid, next(nr), payload, "peer.Added#1", 1, datetime.now(UTC), "w")]
            ),
            a.samples,
        )
        host = make_host(journal)
        cid, seq = uuid.uuid4().hex, iter(range(10**9))
        out[f"cassandra_host_ask_ordered_guard_{guard}"] = await sequential(
            lambda: host.ask_ordered("seq-" + guard, cid, next(seq), Add(PAYLOAD)), a.samples
        )
        out[f"cassandra_host_w2_shape_guard_{guard}"] = await concurrent(
            host, a.entities, a.callers, a.samples * 4
        )
        await host.close()
        await journal.close()
    out["loadavg_end"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default="127.0.0.1:9042")
    ap.add_argument("--keyspace", default="peer_raysource")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--entities", type=int, default=1000)
    ap.add_argument("--callers", type=int, default=50)
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
