"""``raysource cassandra start|stop|status`` (the dev node, :mod:`raysource.devnode`) and
``raysource schema [migrate]`` (:mod:`raysource.journal.cassandra.schema`, ``.migrate``)."""

from __future__ import annotations

import argparse
import sys

from raysource.journal.errors import ConfigError

__all__ = ["cassandra", "schema"]


def cassandra(args: argparse.Namespace) -> int:
    from raysource.devnode.local_node import LocalCassandra

    node = LocalCassandra(port=args.port, auth=args.auth, tls=args.tls)
    if args.action == "start":
        status = node.start(
            progress=lambda m: print(f"raysource: {m}", file=sys.stderr), fresh=not args.keep_data
        )
        print(status.describe())
        print(status.contact_point)
        for key, value in status.client_env.items():  # file paths, never a password
            if key != "RAYSOURCE_CASSANDRA":
                print(f"export {key}={value}")
    elif args.action == "stop":
        stopped = node.stop()
        print("Cassandra stopped" if stopped else "Cassandra was not running")
    else:
        status = node.status()
        print(status.describe())
        return 0 if status.running else 3
    return 0


def schema(args: argparse.Namespace) -> int:
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.schema import schema_cql

    if args.action == "migrate":
        return _schema_migrate(args)
    if args.dc:
        dcs: dict[str, int] = {}
        for item in args.dc:
            dc, _, rf = item.partition(":")
            if not dc or not rf.isdigit():
                raise ConfigError(f"--dc expects DC:RF (e.g. dc1:3), got {item!r}")
            dcs[dc] = int(rf)
        config = CassandraConfig(  # local_dc: any one of them (the CQL does not use it)
            keyspace=args.keyspace,
            replication_strategy="NetworkTopologyStrategy",
            datacenters=dcs,
            local_dc=next(iter(dcs)),
        )
    else:
        config = CassandraConfig(keyspace=args.keyspace, replication_factor=args.rf)
    print(schema_cql(config), end="")
    return 0


def _schema_migrate(args: argparse.Namespace) -> int:
    """Copy a keyspace's legacy ``messages`` rows into the epoch-keyed table (epoch 0)."""
    import asyncio

    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.migrate import migrate_keyspace

    config = CassandraConfig.from_env(args.cassandra, keyspace=args.keyspace, connect_timeout=5.0)
    copied = asyncio.run(migrate_keyspace(config))
    print(
        f"copied {copied} rows from {config.keyspace}.{config.legacy_events_table} into "
        f"{config.keyspace}.{config.events_table} (epoch 0)"
    )
    return 0
