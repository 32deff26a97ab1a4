"""The ``raysource`` command line: one CLI, subcommands per job.

    raysource cassandra start|stop|status [--port N]
    raysource schema [--keyspace K] [--rf N | --dc DC:RF ...]
    raysource demo [--seconds S]

The CLI sits at the top of the import graph (it may use every layer); it holds no logic of its
own beyond argument parsing and printing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from journal.errors import ConfigError, RaysourceError
from journal.local_node import LocalCassandra


def _cassandra(args: argparse.Namespace) -> int:
    node = LocalCassandra(port=args.port)
    if args.action == "start":
        status = node.start(progress=lambda m: print(f"raysource: {m}", file=sys.stderr))
        print(status.describe())
        print(status.contact_point)
    elif args.action == "stop":
        stopped = node.stop()
        print("Cassandra stopped" if stopped else "Cassandra was not running")
    else:
        status = node.status()
        print(status.describe())
        return 0 if status.running else 3
    return 0


def _schema(args: argparse.Namespace) -> int:
    from journal.config import CassandraConfig
    from journal.schema import schema_cql

    if args.dc:
        dcs: dict[str, int] = {}
        for item in args.dc:
            dc, _, rf = item.partition(":")
            if not dc or not rf.isdigit():
                raise ConfigError(f"--dc expects DC:RF (e.g. dc1:3), got {item!r}")
            dcs[dc] = int(rf)
        config = CassandraConfig(
            keyspace=args.keyspace, replication_strategy="NetworkTopologyStrategy",
            datacenters=dcs,
        )
    else:
        config = CassandraConfig(keyspace=args.keyspace, replication_factor=args.rf)
    print(schema_cql(config), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo  # heavy imports (Ray) only for this command

    return run_demo(seconds=args.seconds, contact=args.cassandra, keep=args.keep_running)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysource", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cas = sub.add_parser("cassandra", help="start, stop or check the local Cassandra node")
    cas.add_argument("action", choices=["start", "stop", "status"])
    cas.add_argument("--port", type=int, default=None, help="CQL port (default 9042 or a free one)")
    cas.set_defaults(func=_cassandra)

    schema = sub.add_parser("schema", help="print the production CQL schema for operators")
    schema.add_argument("--keyspace", default="raysource")
    schema.add_argument("--rf", type=int, default=3, help="SimpleStrategy replication factor")
    schema.add_argument("--dc", action="append", default=[],
                        help="DC:RF for NetworkTopologyStrategy (repeatable)")
    schema.set_defaults(func=_schema)

    demo = sub.add_parser("demo", help="run the main job on local Ray with a local Cassandra")
    demo.add_argument("--seconds", type=float, default=20.0, help="how long to drive load")
    demo.add_argument("--cassandra", default=None, help="host:port of an existing Cassandra")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the Cassandra node it started running")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RaysourceError as exc:
        print(f"raysource: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
