"""``raysource doctor``: the CLI of :mod:`raysource.ops.doctor` (registered by
``raysource.cli.main``).

Prints one line per check (``ok``/``FAIL``, the check, why) or, with ``--json``, a JSON
document ``{"ok": bool, "checks": [{"name", "ok", "detail"}, ...]}``; exits 1 when any check
failed, 2 on bad input (one line, like every command).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any, contact_type: Any, positive: Any) -> None:
    doc = sub.add_parser(
        "doctor",
        help="check a running deployment (Cassandra, schema, Ray, system, projections, "
        "timers, clocks); exit 1 if any check fails",
    )
    doc.add_argument(
        "--cassandra",
        type=contact_type,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, else the local node)",
    )
    doc.add_argument("--keyspace", default="raysource")
    doc.add_argument("--system", default=None, help="the running system's name (its checks)")
    doc.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    doc.add_argument("--namespace", default="raysource", help="Ray namespace of the system")
    doc.add_argument("--no-ray", action="store_true", help="check only the store")
    doc.add_argument(
        "--projection",
        action="append",
        default=[],
        help="a projection to check (repeatable; default: every one in the offset store)",
    )
    doc.add_argument("--timeout", type=positive, default=5.0, help="seconds per check")
    doc.add_argument(
        "--max-lag", type=positive, default=60.0, help="a projection's lag limit (seconds)"
    )
    doc.add_argument("--json", action="store_true", help="print JSON instead of the table")
    doc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from raysource.cli.args import cassandra_config
    from raysource.ops.doctor import DoctorSettings, diagnose

    config = cassandra_config(args, connect_timeout=args.timeout)
    joined = False
    if not args.no_ray:
        from raysource.runtime.actors.cluster import connect_ray

        # before Ray is imported: token settings apply
        connect_ray(args.address, quiet=True, namespace=args.namespace)
        joined = True
    try:
        checks = asyncio.run(
            diagnose(
                DoctorSettings(
                    config,
                    system=args.system,
                    namespace=args.namespace,
                    projections=tuple(args.projection),
                    ray=not args.no_ray,
                    timeout_s=args.timeout,
                    max_lag_s=args.max_lag,
                )
            )
        )
    finally:
        if joined:
            import ray

            ray.shutdown()
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{'ok' if c.ok else 'FAIL':<5} {c.name:<{width}}  {c.detail}")
        print("healthy" if ok else f"{sum(not c.ok for c in checks)} check(s) failed")
    sys.stdout.flush()
    return 0 if ok else 1
