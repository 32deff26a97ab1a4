"""``raysource forget SUBJECT`` (crypto-shredding of one data subject) and
``raysource forget SUBJECT --verify`` (prove it after the fact); the logic is
:mod:`raysource.ops.forget`. Registered by :func:`register` from ``raysource.cli.main``."""

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

    from raysource.cli.args import cassandra_config
    from raysource.journal.errors import ConfigError
    from raysource.ops import forget
    from raysource.ops import inspect as ins
    from raysource.ops.specs import load_spec

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
    config = cassandra_config(args, connect_timeout=5.0)
    if args.verify:
        types = ins.load_app(args.app)
        report = asyncio.run(
            forget.verify_forgotten(config, args.subject, args.value, types, limit=args.limit)
        )
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    # no --projection: the example view, where it is set up
    specs = None if args.projection is None else [load_spec(r) for r in args.projection]
    done = asyncio.run(forget.forget_with_views(config, args.subject, specs, settle=args.settle))
    print("\n".join(done.lines()))
    if args.system is not None:
        from raysource.runtime.actors.cluster import connect_ray
        from raysource.sharding.system import forget_live

        connect_ray(args.address, quiet=True, namespace=args.namespace)
        n = forget_live(args.system, args.namespace, args.subject)
        print(f"  live: {n} active aggregate(s) of system {args.system} passivated")
    return 0
