"""Retention cleanup (issue 27): the cleaner's rate and what it does to reads, on Cassandra.

Two aggregate types with the same histories (``--aggregates`` aggregates of ``--events`` events
each, two snapshots: the 2nd newest at half the history): ``cleaned`` keeps its events back to
the 2nd newest snapshot (``KeepFromSnapshot(2)``), ``kept`` keeps everything. Measured in one
run, reads alternating between the two so load drift on a shared machine hits both alike:

* the read of an aggregate (``highest_sequence_nr`` + a replay of its valid log, what a
  by-id reader does) before the cleanup, on both types;
* one cleaner pass over ``cleaned``: rows deleted per second (wall) and CPU seconds per 1,000
  rows (process time, stable on a loaded machine), with the tombstones it wrote;
* the same reads after the cleanup, the cleaned aggregates beside the never-cleaned ones;
* a third type with the same histories, ``closed``, whose every event is final
  (``KeepUntilFinal``) with a snapshot at its last event: its pass deletes every row, and its
  CPU per 1,000 rows stands beside ``cleaned``'s (the cost of looking for the final event).

    .venv/bin/python -m benchmarks.retention_bench --contact HOST:PORT [--aggregates 10]
        [--events 2000] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from raysource.examples.ledger import LEDGER, Appended
from raysource.journal.api import StoredEvent, StoredSnapshot
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.retention import RetentionCleaner
from raysource.journal.retention import KeepFromSnapshot, KeepUntilFinal
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.cassandra import CassandraSnapshotStore

CLEANED = dataclasses.replace(
    LEDGER,
    name="cleaned",
    snapshot=SnapshotPolicy(every_n_events=100, keep=2),
    retention=KeepFromSnapshot(2),
)
KEPT = dataclasses.replace(LEDGER, name="kept")
CLOSED = dataclasses.replace(
    LEDGER,
    name="closed",
    snapshot=SnapshotPolicy(every_n_events=100, keep=2),
    retention=KeepUntilFinal(("ledger.Appended",)),  # the histories are written as LEDGER's
)


async def _fill(journal, snaps, pid: str, events: int, group: int) -> None:
    ser = serialization_for(LEDGER, StoreSpec())
    now = datetime.now(UTC)
    await journal.begin_activation(pid, "bench")
    for first in range(1, events + 1, group):
        batch = []
        for seq in range(first, min(first + group, events + 1)):
            sid, manifest, payload = ser.encode(Appended(f"op{seq}", 1))
            batch.append(StoredEvent(pid, seq, payload, manifest, sid, now, "bench"))
        await journal.append(batch)
    await journal.end_activation(pid, "bench")
    sid, manifest, payload = ser.encode(LEDGER.initial_state)
    marks = (events // 2, events - events // 10)  # the 2nd newest is the mark
    if pid.startswith(CLOSED.name + "|"):
        marks = (events // 2, events)  # a snapshot on the final event: the mark is the end
    for seq in marks:
        await snaps.save(StoredSnapshot(pid, seq, payload, manifest, sid, now))


async def _read(journal, pid: str) -> float:
    t = time.perf_counter()
    await journal.highest_sequence_nr(pid)
    async for _ in journal.replay(pid):
        pass
    return time.perf_counter() - t


async def _reads(journal, pids: dict[str, list[str]], rounds: int) -> dict[str, float]:
    lat: dict[str, list[float]] = {k: [] for k in pids}
    for r in range(rounds):
        for k in pids if r % 2 == 0 else reversed(list(pids)):
            for pid in pids[k]:
                lat[k].append(await _read(journal, pid))
    return {k: statistics.median(v) * 1000 for k, v in lat.items()}


async def run(contact: str, aggregates: int, events: int, partition: int, rounds: int) -> dict:
    host, _, port = contact.rpartition(":")
    ks = f"raysource_retbench_{uuid.uuid4().hex[:6]}"
    cfg = CassandraConfig(
        contact_points=(host,), port=int(port), keyspace=ks, partition_size=partition
    )
    journal = await CassandraJournal.connect(cfg, create_schema=True)
    try:
        snaps = CassandraSnapshotStore(journal.session, cfg)
        pids = {
            t.name: [t.persistence_id(f"a{i}") for i in range(aggregates)]
            for t in (CLEANED, KEPT, CLOSED)
        }
        group = min(partition, 100)
        for k in pids:
            await asyncio.gather(*(_fill(journal, snaps, p, events, group) for p in pids[k]))
        before = await _reads(journal, pids, rounds)
        cleaner = RetentionCleaner(journal, CLEANED.name, CLEANED.retention)
        report = await cleaner.run()
        closer = RetentionCleaner(journal, CLOSED.name, CLOSED.retention)
        closed = await closer.run()
        after = await _reads(journal, pids, rounds)
        assert (await cleaner.verify()).ok and (await closer.verify()).ok
        assert closed.rows_deleted == aggregates * events
        rows = report.rows_deleted
        return {
            "aggregates": aggregates,
            "events": events,
            "partition_size": partition,
            "cleanup": {
                "rows": rows,
                "tombstones": report.tombstones,
                "wall_s": report.wall_s,
                "cpu_s": report.cpu_s,
                "rows_per_s": rows / report.wall_s if report.wall_s else 0.0,
                "cpu_ms_per_1k_rows": report.cpu_s * 1e6 / rows if rows else 0.0,
            },
            "cleanup_final": {
                "rows": closed.rows_deleted,
                "tombstones": closed.tombstones,
                "wall_s": closed.wall_s,
                "cpu_s": closed.cpu_s,
                "rows_per_s": closed.rows_deleted / closed.wall_s if closed.wall_s else 0.0,
                "cpu_ms_per_1k_rows": closed.cpu_s * 1e6 / closed.rows_deleted,
            },
            "read_p50_ms": {
                "cleaned_before": before["cleaned"],
                "kept_before": before["kept"],
                "cleaned_after": after["cleaned"],
                "kept_after": after["kept"],
                "closed_after": after["closed"],
            },
            "after_ratio": after["cleaned"] / after["kept"],
            "before_ratio": before["cleaned"] / before["kept"],
        }
    finally:
        await journal.session.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=60)
        await journal.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contact", required=True, help="HOST:PORT of Cassandra")
    ap.add_argument("--aggregates", type=int, default=10, help="per type")
    ap.add_argument("--events", type=int, default=2000, help="per aggregate")
    ap.add_argument("--partition-size", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6, help="reads per aggregate and phase")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    r = asyncio.run(run(a.contact, a.aggregates, a.events, a.partition_size, a.rounds))
    c, rd = r["cleanup"], r["read_p50_ms"]
    print(
        f"cleanup: {c['rows']:,} rows with {c['tombstones']} tombstones in {c['wall_s']:.2f} s "
        f"= {c['rows_per_s']:,.0f} rows/s; {c['cpu_ms_per_1k_rows']:.2f} ms CPU per 1k rows"
    )
    f = r["cleanup_final"]
    print(
        f"cleanup, every row of closed aggregates (KeepUntilFinal): {f['rows']:,} rows with "
        f"{f['tombstones']} tombstones in {f['wall_s']:.2f} s = {f['rows_per_s']:,.0f} rows/s; "
        f"{f['cpu_ms_per_1k_rows']:.2f} ms CPU per 1k rows "
        f"(x{f['cpu_ms_per_1k_rows'] / c['cpu_ms_per_1k_rows']:.2f} of KeepFromSnapshot's)"
    )
    print(
        f"read p50 (highest + replay): before cleaned {rd['cleaned_before']:.2f} ms / kept "
        f"{rd['kept_before']:.2f} ms (x{r['before_ratio']:.2f}); after cleaned "
        f"{rd['cleaned_after']:.2f} ms / kept {rd['kept_after']:.2f} ms (x{r['after_ratio']:.2f}); "
        f"closed after {rd['closed_after']:.2f} ms"
    )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
