"""``raysource forget SUBJECT`` (crypto-shredding of one data subject) and
``raysource forget SUBJECT --verify`` (prove it after the fact); the logic is
:mod:`raysource.app.forget`. Registered by :func:`register` from ``raysource.app.cli``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any, common_contact: Any) -> None:
    """Add the ``forget`` subcommand to the CLI's subparsers (``common_contact``: the parser
    type of ``--cassandra``)."""
    p = sub.add_parser(
        "forget",
        help="forget a data subject: destroy its key (its personal data in events and "
        "snapshots becomes unreadable) and scrub the views; --verify checks afterwards",
    )
    p.add_argument("subject", help="the data subject's id (as in the events' subject fields)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="only check: the key is destroyed, and no table holds the --value texts or an "
        "unsealed personal value of the subject (exit 1 if anything is found)",
    )
    p.add_argument(
        "--value",
        action="append",
        default=[],
        help="--verify: a plaintext of the subject to search every table for (repeatable)",
    )
    p.add_argument(
        "--limit", type=int, default=100_000, help="--verify: rows scanned per table at most"
    )
    p.add_argument(
        "--projection",
        action="append",
        default=None,
        help="module:ATTR of a ProjectionSpec whose view is scrubbed (repeatable; default: "
        "the example reservations view, when its table exists)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds between destroying the key and scrubbing the views (the key rings' "
        "max_age: no process decodes with the old key after it)",
    )
    p.add_argument(
        "--app",
        default="raysource.examples.seats:SHOW",
        help="--verify: module:ATTR naming the application's AggregateType(s)",
    )
    p.add_argument(
        "--system",
        default=None,
        help="also reach the live aggregates of this running system: its hosts drop the "
        "subject's cached key and passivate (they recover with the placeholder)",
    )
    p.add_argument("--address", default="auto", help="--system: Ray cluster address")
    p.add_argument("--namespace", default="raysource", help="--system: its Ray namespace")
    p.add_argument("--cassandra", type=common_contact, default=None, help="host:port")
    p.add_argument("--keyspace", default="raysource")
    p.set_defaults(func=_forget)


def _forget(args: argparse.Namespace) -> int:
    import asyncio

    from raysource.app import forget
    from raysource.app import inspect as ins
    from raysource.app.cli import _config, _load_spec
    from raysource.journal.errors import ConfigError

    if not args.subject.strip():
        raise ConfigError("a subject id must be non-empty")
    if args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    if args.settle < 0:
        raise ConfigError("--settle must be >= 0")
    if args.value and not args.verify:
        raise ConfigError("--value is for --verify")
    if args.system is not None and (args.verify or not args.system.strip()):
        raise ConfigError("--system names a running system, and is not for --verify")
    config = _config(args, connect_timeout=5.0)
    if args.verify:
        types = ins.load_app(args.app)
        report = asyncio.run(
            forget.verify_forgotten(config, args.subject, args.value, types, limit=args.limit)
        )
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    refs = args.projection
    default = refs is None
    specs = [_load_spec(r) for r in (refs or ["raysource.examples.reservations_view:RESERVATIONS"])]

    async def run() -> forget.ForgetReport:
        from raysource.journal.cassandra.session import CassandraSession

        session = await CassandraSession.open(config)
        try:
            chosen = specs
            if default:  # the example view only where it was set up
                chosen = [s for s in specs if await _has_view(session, config.keyspace)]
            return await forget.forget_subject(
                config, args.subject, chosen, session=session, settle=args.settle
            )
        finally:
            await session.close()

    print("\n".join(asyncio.run(run()).lines()))
    if args.system is not None:
        from raysource.runtime.actors.cluster import connect_ray
        from raysource.sharding.system import forget_live

        connect_ray(args.address, quiet=True, namespace=args.namespace)
        n = forget_live(args.system, args.namespace, args.subject)
        print(f"  live: {n} active aggregate(s) of system {args.system} passivated")
    return 0


async def _has_view(session: Any, keyspace: str) -> bool:
    from raysource.examples.reservations_view import VIEW_TABLE

    rows = await session.select_all(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
        (keyspace, VIEW_TABLE),
    )
    return bool(rows)
