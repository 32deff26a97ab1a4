"""``raysource demo``, ``raysource loadtest`` and ``raysource serve``: the parameters of a run
of :mod:`raysource.loadtest` (heavy imports, Ray among them, only for these commands)."""

from __future__ import annotations

import argparse

__all__ = ["demo", "loadtest", "serve"]


def demo(args: argparse.Namespace) -> int:
    from raysource.loadtest.demo import run_demo

    return run_demo(seconds=args.seconds, contact=args.cassandra, keep=args.keep_running).exit_code


def loadtest(args: argparse.Namespace) -> int:
    from raysource.loadtest.driver import LoadTestParams
    from raysource.loadtest.standalone import run_standalone

    params = LoadTestParams(
        workload=args.workload,
        entities=args.entities,
        clients=args.clients,
        duration_s=(
            None
            if args.commands is not None
            else args.duration
            if args.duration is not None
            else 10.0
        ),
        commands=args.commands,
        placement=args.placement,
        snapshot_every=args.snapshot_every,
        guard=args.guard == "on",
        window=args.window,
        shards=args.shards,
        keyspace=args.keyspace,
        results_dir=args.results,
        address=args.address,
        via=args.via,
        replicas=args.replicas,
        http_port=args.http_port,
    )
    if args.address is not None:
        import uuid

        from raysource.runtime.actors.cluster import connect_ray

        connect_ray(
            args.address or "auto", quiet=True, namespace=f"raysource-{uuid.uuid4().hex[:8]}"
        )
    print(
        "raysource loadtest: "
        + "  ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("func", "command"))
    )
    try:
        return run_standalone(params, contact=args.cassandra, keep=args.keep_running)
    finally:
        if args.address is not None:
            import ray

            ray.shutdown()


def serve(args: argparse.Namespace) -> int:
    from raysource.loadtest.serve import run_serve

    if args.address is not None:
        from raysource.runtime.actors.cluster import connect_ray

        connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)
    return run_serve(
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        contact=args.cassandra,
        keyspace=args.keyspace,
        system=args.system,
        address=args.address,
        namespace=args.namespace,
        seconds=args.seconds,
        demo=args.demo,
        keep=args.keep_running,
    )
