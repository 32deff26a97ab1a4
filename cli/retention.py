"""``raysource retention plan|run|verify TYPE``: the retention cleaner from the command line.

* ``plan`` — a dry run: per aggregate of the type, the mark its policy gives, the partitions and
  rows that would go and the tombstones that would be written (one per partition, against one
  per row); with ``--tags``, the same for the tag rows. Writes nothing.
* ``run`` — one bounded, paced pass (``--max-aggregates``, ``--rows-per-s``); resumes where the
  previous run stopped. ``--tags`` also cleans the tag rows.
* ``verify`` — proves no row at or below a recorded retention mark remains (bounded scan,
  prints what it checked); exit status 1 when it finds one.

The policy is the aggregate type's ``retention`` (``--app module:ATTR`` names the application's
types, as for ``raysource events``). Registered by :func:`add_parser` from
``raysource.cli.main``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any, contact: Callable[[str], str], count: Callable[[str], int]) -> None:
    """Register ``retention`` on the CLI's subparsers (``contact``/``count``: its checked
    argument types)."""
    ret = sub.add_parser(
        "retention", help="plan, run or verify an aggregate type's retention (event deletion)"
    )
    ret.add_argument("action", choices=["plan", "run", "verify"])
    ret.add_argument("type", help="aggregate type name")
    ret.add_argument(
        "--app",
        default="raysource.examples.seats:SHOW",
        help="module:ATTR naming the application's AggregateType(s)",
    )
    ret.add_argument(
        "--cassandra",
        type=contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, else the local node)",
    )
    ret.add_argument("--keyspace", default="raysource")
    ret.add_argument("--tags", action="store_true", help="plan/run: the tag rows too")
    ret.add_argument(
        "--rows-per-s", type=count, default=None, help="run: pace deletes (rows per second)"
    )
    ret.add_argument(
        "--max-aggregates", type=count, default=None, help="run: stop after this many aggregates"
    )
    ret.add_argument(
        "--limit", type=count, default=100_000, help="verify: check at most this many aggregates"
    )
    ret.set_defaults(func=_retention)


def _retention(args: argparse.Namespace) -> int:
    import asyncio

    from raysource.cli.args import cassandra_config
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.journal.cassandra.retention import RetentionCleaner
    from raysource.ops import inspect as ins

    agg = ins.resolve_type(args.type, ins.load_app(args.app))
    config = cassandra_config(args, connect_timeout=5.0)

    async def run() -> int:
        async with ins.reading(config) as (journal, _):
            assert isinstance(journal, CassandraJournal)
            cleaner = RetentionCleaner(
                journal,
                agg.name,
                agg.retention,
                rows_per_s=args.rows_per_s,
                max_aggregates=args.max_aggregates if args.action == "run" else None,
            )
            if args.action == "verify":
                verified = await cleaner.verify(max_aggregates=args.limit)
                print("\n".join(verified.lines()))
                return 0 if verified.ok else 1
            report = await cleaner.run(dry_run=args.action == "plan")
            print("\n".join(report.lines()))
            if args.action == "run":
                print(f"cpu {report.cpu_s:.3f} s, wall {report.wall_s:.3f} s")
            if args.tags:
                tags = await cleaner.clean_tags(dry_run=args.action == "plan")
                print("\n".join(tags.lines()))
            return 0

    return asyncio.run(run())
