"""``raysource projection ...`` (read-side projections on a running Ray cluster:
:mod:`raysource.readside.projection_actor`, ``.verify``; the version commands are
:mod:`raysource.cli.projection_versions`) and ``raysource view reservations CUSTOMER``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from raysource.cli.args import cassandra_config
from raysource.cli.projection_versions import VERSION_OPS, projection_versions
from raysource.journal.errors import ConfigError

if TYPE_CHECKING:
    from raysource.readside.projections import ProjectionSpec

__all__ = ["READSIDE_OPS", "projection", "view"]

READSIDE_OPS = ("verify", "parked", "retry", "skip", "set-offset")


def _required(spec: ProjectionSpec | None) -> ProjectionSpec:
    """The spec a command needs (loaded whenever the command needs it)."""
    if spec is None:
        raise ConfigError("this projection command needs --spec module:ATTR")
    return spec


def projection(args: argparse.Namespace) -> int:
    """``projection``: control read-side projections on a running Ray cluster."""
    import asyncio

    if args.action in READSIDE_OPS:
        return _projection_op(args)
    if args.action in VERSION_OPS:
        return projection_versions(args, lambda: cassandra_config(args, connect_timeout=5.0))

    from raysource.ops.specs import load_spec
    from raysource.readside.projections import offset_from_str
    from raysource.runtime.actors.cluster import connect_ray

    spec = load_spec(args.spec) if args.action in ("start", "reset") or not args.name else None
    name = args.name or _required(spec).name
    if spec is not None and spec.name != name:
        raise ConfigError(
            f"--spec names projection {spec.name!r}, not {name!r} (leave the name "
            "out to use the spec's)"
        )
    target = offset_from_str(args.to) if args.action == "reset" else None
    config = cassandra_config(args, connect_timeout=5.0)
    connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)
    from raysource.readside.projection_actor import Projections

    control = Projections(config, detached=True)

    async def run() -> list[dict]:
        if args.action == "start":
            await control.start(_required(spec))
        elif args.action == "reset":
            await control.reset(_required(spec), target)
        elif args.action != "status":
            await getattr(control, args.action)(name)
        return await control.status(name)

    statuses = asyncio.run(run())
    if not statuses:
        raise ConfigError(
            f"no projection {name!r} on this cluster: no live workers and no "
            f"stored offsets in keyspace {config.keyspace!r}"
        )
    for st in statuses:
        lag = (
            f"lag {st['lag_events']} events / {st['lag_seconds']:.1f} s"
            if st.get("lag_events") is not None
            else "lag ?"
        )
        err = f"  error: {st['error']}" if st.get("error") else ""
        parked = st.get("parked") or []
        park = f"  parked {len(parked)} aggregate(s)" if parked else ""
        print(
            f"{st['projection']} {st['worker']}: {st['state']}  offset {st['offset']}  "
            f"{lag}{park}{err}"
        )
        for p in parked:
            print(f"  parked {p['persistence_id']} at #{p['sequence_nr']}: {p['error']}")
    return 0


def _projection_op(args: argparse.Namespace) -> int:
    """``projection verify|parked|retry|skip|set-offset`` (operating a projection)."""
    import asyncio

    from raysource.ops.specs import load_spec
    from raysource.readside.projections import offset_from_str
    from raysource.runtime.actors.cluster import connect_ray

    spec = (
        load_spec(args.spec) if args.action in ("verify", "set-offset") or not args.name else None
    )
    name = args.name or _required(spec).name
    if spec is not None and spec.name != name:
        raise ConfigError(f"--spec names projection {spec.name!r}, not {name!r}")
    if args.action in ("retry", "skip") and not args.pid:
        raise ConfigError(
            f"projection {args.action} needs --pid PERSISTENCE_ID (see "
            "`raysource projection parked`)"
        )
    target = offset_from_str(args.to) if args.action == "set-offset" and args.to != "end" else None
    config = cassandra_config(args, connect_timeout=5.0)
    if args.action == "verify":
        from raysource.readside.verify import verify_cassandra

        report = asyncio.run(verify_cassandra(_required(spec), config))
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    from raysource.readside.projection_actor import Projections

    if args.action == "parked":
        parked = asyncio.run(Projections(config).parked(name))
        for p in parked:
            print(
                f"{name} {p['worker']}: {p['persistence_id']} parked at "
                f"#{p['sequence_nr']}: {p['error']}"
            )
        print(f"{len(parked)} parked aggregate stream(s)")
        return 0
    connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)
    control = Projections(config, detached=True)

    async def run() -> str:
        if args.action in ("retry", "skip"):
            o = await control.retry(name, args.pid, skip=args.action == "skip")
            again = f"; parked again at #{o['parked']['sequence_nr']}" if o["parked"] else ""
            return f"{name}: {args.action} {args.pid}: {o['applied']} event(s) applied{again}"
        to = target
        if args.to == "end":
            from raysource.readside.verify import latest_offset_cassandra

            to = await latest_offset_cassandra(config, _required(spec).tag)
            if to is None:
                return f"{name}: tag {_required(spec).tag!r} has no events; offset unchanged"
        await control.reset(_required(spec), to)
        from raysource.readside.projections import offset_to_str

        return f"{name}: offset set to {offset_to_str(to)}"

    print(asyncio.run(run()))
    return 0


def view(args: argparse.Namespace) -> int:
    """``view reservations CUSTOMER``: query the example read-side view."""
    import asyncio

    from raysource.examples.reservations_view import reservations_of
    from raysource.journal.cassandra.session import CassandraSession

    config = cassandra_config(args, connect_timeout=5.0)

    async def run() -> list[tuple[str, str]]:
        async with CassandraSession(config) as session:
            return await reservations_of(session, config.keyspace, args.customer)

    rows = asyncio.run(run())
    for show, seat in rows:
        print(f"{show}\t{seat}")
    print(f"{args.customer}: {len(rows)} reservation(s)", file=sys.stderr)
    return 0
