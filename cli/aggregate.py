"""One aggregate: ``raysource events|replay TYPE ID`` (its journal, read-only:
:mod:`raysource.ops.inspect`) and ``raysource state TYPE ID`` (the live aggregate of a running
system: :mod:`raysource.ops.state`)."""

from __future__ import annotations

import argparse

from raysource.cli.args import cassandra_config

__all__ = ["inspect", "state"]


def inspect(args: argparse.Namespace) -> int:
    """``events`` and ``replay``: read-only views of one aggregate's journal."""
    import asyncio

    from raysource.ops import inspect as ins

    agg = ins.resolve_type(args.type, ins.load_app(args.app))
    agg.persistence_id(args.id)  # a bad id is a usage error, before any connection
    config = cassandra_config(args, connect_timeout=5.0)
    snapshots = args.command == "replay" and args.snapshot

    async def run() -> None:
        async with ins.reading(config, snapshots=snapshots) as (journal, snaps):
            if args.command == "events":
                async for e in ins.event_log(
                    journal, None, agg, args.id, args.from_seq, args.to_seq
                ):
                    tags = ",".join(sorted(e.tags)) or "-"
                    print(
                        f"{e.sequence_nr:>6}  {e.timestamp.isoformat(timespec='milliseconds')}"
                        f"  {e.event!r}  tags={tags}"
                    )
                return
            final = None
            async for step in ins.replay_states(
                journal, None, agg, args.id, args.to_seq, snapshots=snaps
            ):
                if step.is_origin:
                    origin = (
                        f"the snapshot at {step.sequence_nr}"
                        if step.from_snapshot
                        else "the initial state"
                    )
                    print(
                        f"replaying {agg.persistence_id(args.id)} from {origin}: "
                        f"{step.state_after!r}"
                    )
                else:
                    print(f"{step.sequence_nr:>6}  {step.event!r}")
                    for line in step.diff or ("(no change)",):
                        print(f"          {line}")
                final = step
            assert final is not None
            print(f"state at {final.sequence_nr}: {final.state_after!r}")

    asyncio.run(run())
    return 0


def state(args: argparse.Namespace) -> int:
    """``state``: ask the live aggregate of a running system for its current state."""
    import dataclasses

    from raysource.ops import inspect as ins
    from raysource.runtime.actors.cluster import connect_ray

    agg = ins.resolve_type(args.type, ins.load_app(args.app))
    agg.persistence_id(args.id)  # a bad id is a usage error, before any connection
    config = cassandra_config(args, connect_timeout=5.0)
    # before Ray is imported: token settings apply
    connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)
    import ray

    from raysource.ops.state import live_state

    try:
        live = live_state(
            args.system, agg, args.id, config, namespace=args.namespace, timeout=args.timeout
        )
    finally:
        ray.shutdown()
    print(f"{agg.persistence_id(args.id)} ({args.system}):")
    if dataclasses.is_dataclass(live) and not isinstance(live, type):
        for f in dataclasses.fields(live):
            print(f"  {f.name} = {getattr(live, f.name)!r}")
    else:
        print(f"  {live!r}")
    return 0
