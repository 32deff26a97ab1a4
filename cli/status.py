"""``raysource status``: a running system's hosts and their hot aggregates (registered by
``raysource.cli.main``; the reading is :func:`raysource.ops.status.host_status`).

For every host actor of the system: its name, active entities, commands so far, and the top
entities by commands per second and by estimated queue wait over the host's last sweep
interval (:mod:`raysource.runtime.hot`). ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any, positive: Any) -> None:
    st = sub.add_parser(
        "status", help="a running system's hosts and hot aggregates (top-k by commands/s, wait)"
    )
    st.add_argument("--system", required=True, help="the running system's name")
    st.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    st.add_argument("--namespace", default="raysource", help="Ray namespace of the system")
    st.add_argument("--timeout", type=positive, default=10.0, help="seconds to wait")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raysource.runtime.actors.cluster import connect_ray

    connect_ray(args.address, quiet=True, namespace=args.namespace)
    import ray

    from raysource.ops.status import host_status

    try:
        hosts = host_status(args.system, args.namespace, args.timeout)
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(hosts, indent=2))
        return 0
    print(f"system {args.system}: {len(hosts)} host(s)")
    for h in hosts:
        if "error" in h:
            print(f"  {h['name']}: {h['error']}")
            continue
        print(f"  {h['name']}: {h['active']} active, {h['commands']} commands")
        for f in h["hot"]["by_commands_per_s"]:
            print(f"    hot  {f['entity_id']:<30} {f['commands_per_s']:9.1f} cmd/s")
        for f in h["hot"]["by_queue_wait"]:
            print(
                f"    wait {f['entity_id']:<30} {f['queue_wait_s'] * 1000:9.1f} ms "
                f"({f['queued']} queued)"
            )
    return 0
