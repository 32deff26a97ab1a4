"""Every raysource benchmark in one run: ``make bench`` / ``raysource bench``.

Gets Cassandra once (explicit contact point, running node, Docker, or a node from Maven jars),
runs each benchmark script against it in turn (each prints its own table: the runtime's figure
beside the raw limit measured in the same run, and the ratio), then writes all their JSON into
one file ``results/bench-<timestamp>.json`` for comparison over time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from raysource.app.local_node import select_cassandra

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [
    ("journal", "benchmarks.journal_bench", []),
    ("runtime", "benchmarks.runtime_bench", []),
    ("sharding", "benchmarks.sharding_bench", []),
    ("projection", "benchmarks.projection_bench", []),
    ("service", "benchmarks.service_bench", []),
    ("timers", "benchmarks.timers_bench", []),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", default=None, help="host:port of Cassandra")
    ap.add_argument("--only", action="append", default=[],
                    help="run only these (journal, runtime, sharding, projection, service, timers)")
    args = ap.parse_args(argv)

    source = select_cassandra(args.contact, say=print)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    combined: dict = {"started": stamp, "contact": source.contact_point, "benchmarks": {}}
    failed = []
    try:
        selected = [b for b in BENCHES if not args.only or b[0] in args.only]
        for i, (name, module, extra) in enumerate(selected, 1):
            out = out_dir / f"{name}_bench.json"
            cmd = [sys.executable, "-m", module, "--contact", source.contact_point,
                   "--out", str(out), *extra]
            print(f"\n=== [{i}/{len(selected)}] {name} benchmark ({' '.join(cmd[2:4])})",
                  flush=True)
            t0 = time.monotonic()
            code = subprocess.call(cmd, cwd=ROOT)
            took = time.monotonic() - t0
            print(f"=== {name}: exit {code} in {took:.0f} s", flush=True)
            if code != 0 or not out.exists():
                failed.append(name)
                continue
            combined["benchmarks"][name] = json.loads(out.read_text())
    finally:
        source.release()
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps(combined, indent=2))
    print(f"\nall figures: {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
