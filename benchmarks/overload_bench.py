"""Overload: a host flooded far beyond what its store can take, with and without limits.

    .venv/bin/python -m benchmarks.overload_bench [--seconds 6] [--rate 20000]

One ``AggregateHost`` (the engine every host actor runs) over a journal that takes 50 ms per
append and keeps nothing; an open-loop producer submits ``--rate`` commands per second to one
hot ledger aggregate (every command a separate ``ask``, never awaited by the producer) for
``--seconds``: about four times what group commit gets through (``max_batch`` 256 per 50 ms).
Each mode runs in its own process so its RSS is its own:

* ``bounded``: the defaults (``max_mailbox`` 1000, ``max_in_flight`` 10000): the excess is
  refused at once (``OverloadedError``); calls in flight stay at the limit, RSS stays flat.
* ``unbounded``: ``max_mailbox=None, max_in_flight=None`` (the behaviour before issue 14):
  every command queues; calls in flight and RSS grow for as long as the flood lasts.

Printed per mode: commands sent / applied / refused, the peak number of calls in flight, and
RSS at the start, at the end and its growth (MiB), side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.errors import OverloadedError
from raysource.runtime.host import AggregateHost
from raysource.snapshots.memory import InMemorySnapshotStore


class SlowSink(InMemoryJournal):
    """Takes 50 ms per append and keeps nothing (so RSS measures queued work, not data)."""

    async def append(self, events):  # noqa: ANN001
        await asyncio.sleep(0.05)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def _run(mode: str, seconds: float, rate: int) -> dict:
    ser = Serialization()
    LEDGER.register_types(ser)
    limits = {} if mode == "bounded" else {"max_mailbox": None, "max_in_flight": None}
    host = AggregateHost(
        LEDGER, SlowSink(), InMemorySnapshotStore(), ser, sweep_interval_s=3600, **limits
    )
    counts = {"sent": 0, "applied": 0, "refused": 0, "other": 0}

    def done(task: asyncio.Task) -> None:
        exc = task.exception()
        key = (
            "applied" if exc is None else "refused" if isinstance(exc, OverloadedError) else "other"
        )
        counts[key] += 1

    rss0, peak, tick = _rss_mib(), 0, 0.01
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(int(rate * tick)):
            n = counts["sent"]
            task = asyncio.ensure_future(host.ask("hot", Append(f"op{n}")))
            task.add_done_callback(done)
            counts["sent"] += 1
        peak = max(peak, host._in_flight_total)
        await asyncio.sleep(tick)
    rss1 = _rss_mib()
    return {
        "mode": mode,
        **counts,
        "peak_in_flight": peak,
        "rss_start_mib": round(rss0, 1),
        "rss_end_mib": round(rss1, 1),
        "rss_growth_mib": round(rss1 - rss0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--mode", choices=["bounded", "unbounded"], default=None)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.mode:  # one mode, in this process
        print(json.dumps(asyncio.run(_run(args.mode, args.seconds, args.rate))))
        return
    rows = []
    for mode in ("bounded", "unbounded"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.overload_bench",
                "--mode",
                mode,
                "--seconds",
                str(args.seconds),
                "--rate",
                str(args.rate),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print("  ".join(f"{k:>15}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]!s:>15}" for k in keys))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({row["mode"]: row for row in rows}, indent=2))


if __name__ == "__main__":
    main()
