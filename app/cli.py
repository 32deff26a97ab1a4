"""The ``raysource`` command line: one CLI, subcommands per job.

Size: ~610 lines: each subcommand's argument checks sit beside its handler (bad input is one
line and exit 2 before anything connects); the work itself lives in the modules they call.

    raysource cassandra start|stop|status [--port N] [--keep-data] [--auth] [--tls]
    raysource schema [--keyspace K] [--rf N | --dc DC:RF ...]
    raysource schema migrate [--keyspace K] [--cassandra H:P]
    raysource demo [--seconds S] [--cassandra H:P] [--keep-running]
    raysource loadtest [--workload seats|ledger] [--entities N] [--clients C]
                       [--duration S | --commands N] [--placement dedicated|hosted]
                       [--via refs|http|both] [--replicas N] ...
    raysource serve [--port N] [--replicas N] [--cassandra H:P] [--seconds S] [--demo]
    raysource events TYPE ID [--from N] [--to M] [--cassandra H:P] [--keyspace K] [--app M:ATTR]
    raysource replay TYPE ID [--to N] [--snapshot] [--cassandra H:P] [--keyspace K] [--app M:ATTR]
    raysource state TYPE ID --system NAME [--address RAY] [--namespace NS] [--cassandra H:P] ...
    raysource projection start|stop|pause|resume|reset|status [NAME] [--spec M:ATTR] [--to OFF]
    raysource projection deploy|switch|rollback|drop|versions NAME ...  (cli_projection_versions)
    raysource view reservations CUSTOMER [--cassandra H:P] [--keyspace K]

The CLI sits at the top of the import graph (it may use every layer); it holds no logic of its
own beyond argument parsing and printing.

Bad input is one line on stderr and a non-zero exit (2: usage or configuration, 1: a failed
run), within seconds: arguments are checked before anything connects, a Ray ``--address`` is
probed before Ray is asked to join it (``raysource.runtime.actors.cluster.connect_ray``), and
Cassandra is reached with a short connect timeout. Cassandra credentials and TLS come from the
environment (``RAYSOURCE_CASSANDRA_USERNAME``, ``..._PASSWORD_FILE``, ``..._TLS_CA``, ...: see
``raysource.journal.cassandra.config``), never from the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from raysource.app.cli_projection_versions import (
    VERSION_OPS,
    add_version_arguments,
    projection_versions,
)
from raysource.app.local_node import LocalCassandra
from raysource.journal.errors import ConfigError, RaysourceError

if TYPE_CHECKING:
    from raysource.readside.projections import ProjectionSpec


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, *, strict: bool = True, high: float | None = None):
    """An argparse type: ``kind`` > ``low`` (``strict``) or >= ``low``, and <= ``high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n integer' if kind is int else ' number'}: {text!r}"
            ) from None
        if (
            value != value
            or (value <= low if strict else value < low)
            or (high is not None and value > high)
        ):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}"
                + (f" and <= {high}" if high is not None else "")
                + f", got {text}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


_port = _number(int, 0, high=65535)
_positive = _number(float, 0.0, high=1e9)
_count = _number(int, 0)
_nonneg = _number(int, 0, strict=False)


def _contact(text: str) -> str:
    """``--cassandra host[,host...][:port]``: checked before anything connects."""
    from raysource.journal.cassandra.config import CassandraConfig

    try:
        CassandraConfig.from_contact(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cassandra(args: argparse.Namespace) -> int:
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


def _schema(args: argparse.Namespace) -> int:
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
    from raysource.journal.cassandra.migrate import migrate_events
    from raysource.journal.cassandra.session import CassandraSession

    config = CassandraConfig.from_env(args.cassandra, keyspace=args.keyspace, connect_timeout=5.0)

    async def run() -> int:
        session = CassandraSession(config)
        await session.connect(keyspace="")
        try:
            return await migrate_events(session, config)
        finally:
            await session.close()

    copied = asyncio.run(run())
    print(
        f"copied {copied} rows from {config.keyspace}.{config.legacy_events_table} into "
        f"{config.keyspace}.{config.events_table} (epoch 0)"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raysource.app.demo import run_demo  # heavy imports (Ray) only for this command

    return run_demo(seconds=args.seconds, contact=args.cassandra, keep=args.keep_running).exit_code


def _loadtest(args: argparse.Namespace) -> int:
    from raysource.app.loadtest import LoadTestParams
    from raysource.app.standalone import run_standalone

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


def _serve(args: argparse.Namespace) -> int:
    from raysource.app.serve import run_serve  # heavy imports (Ray Serve) only for this command

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


def _inspect_contact(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """(contact point, environment for ``CassandraConfig.from_env``): ``--cassandra``, else
    ``$RAYSOURCE_CASSANDRA``, else the running local node (whose password and CA files are used
    when it runs with ``--auth``/``--tls`` and the environment names none)."""
    import os

    env = dict(os.environ)
    if args.cassandra:
        return args.cassandra, env
    if env.get("RAYSOURCE_CASSANDRA"):
        return _contact_env(env["RAYSOURCE_CASSANDRA"]), env
    status = LocalCassandra().status()
    if not status.running:
        raise ConfigError(
            "no Cassandra to read from: pass --cassandra host:port, set RAYSOURCE_CASSANDRA, "
            "or start the local node with `raysource cassandra start`"
        )
    for key, value in status.client_env.items():
        env.setdefault(key, value)
    return status.contact_point, env


def _contact_env(text: str) -> str:
    try:
        return _contact(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"RAYSOURCE_CASSANDRA: {exc}") from None


def _config(args: argparse.Namespace, **kwargs):
    """The Cassandra config of a command: contact point from the arguments (else the
    environment or the local node), credentials and TLS from the environment."""
    from raysource.journal.cassandra.config import CassandraConfig

    contact, env = _inspect_contact(args)
    return CassandraConfig.from_env(contact, environ=env, keyspace=args.keyspace, **kwargs)


def _inspect(args: argparse.Namespace) -> int:
    """``events`` and ``replay``: read-only views of one aggregate's journal."""
    import asyncio

    from raysource.app import inspect as ins

    agg = ins.resolve_type(args.type, ins.load_app(args.app))
    agg.persistence_id(args.id)  # a bad id is a usage error, before any connection
    config = _config(args, connect_timeout=5.0)

    async def run() -> None:
        journal, snaps = await ins.open_readonly(
            config, snapshots=args.command == "replay" and args.snapshot
        )
        try:
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
        finally:
            await journal.close()
            if snaps is not None:
                await snaps.close()

    asyncio.run(run())
    return 0


def _state(args: argparse.Namespace) -> int:
    """``state``: ask the live aggregate of a running system for its current state."""
    import dataclasses
    from dataclasses import replace

    from raysource.app import inspect as ins
    from raysource.runtime.actors.cluster import connect_ray

    agg = ins.resolve_type(args.type, ins.load_app(args.app))
    agg.persistence_id(args.id)  # a bad id is a usage error, before any connection
    config = _config(args, connect_timeout=5.0)
    # before Ray is imported: token settings apply
    connect_ray(args.address or "auto", quiet=True, namespace=args.namespace)

    import ray

    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.ray_nodes import get_coordinator
    from raysource.sharding.system import System

    try:
        try:
            coordinator = get_coordinator(args.system, namespace=args.namespace)
        except ValueError:
            raise ConfigError(
                f"no raysource system {args.system} is running on this Ray "
                f"cluster (namespace {args.namespace!r})"
            ) from None
        counts = ray.get(coordinator.shard_counts.remote(), timeout=30)
        if agg.name not in counts:
            raise ConfigError(
                f"aggregate type {agg.name!r} is not registered in system "
                f"{args.system} (registered: {', '.join(sorted(counts)) or 'none'})"
            )
        # the running system's shard count wins (e.g. the demo runs SHOW with fewer shards)
        agg = replace(agg, number_of_shards=counts[agg.name])
        system = System.start(
            args.system,
            store=StoreSpec.for_cassandra(config),
            types=[agg],
            namespace=args.namespace,
        )
        state = system.entity(agg, args.id).state(timeout=args.timeout)
    finally:
        ray.shutdown()
    state = ins.scrub_forgotten(state, agg, config)  # the live state may predate a forget
    print(f"{agg.persistence_id(args.id)} ({args.system}):")
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        for f in dataclasses.fields(state):
            print(f"  {f.name} = {getattr(state, f.name)!r}")
    else:
        print(f"  {state!r}")
    return 0


def _load_spec(ref: str) -> ProjectionSpec:
    import importlib

    from raysource.readside.projections import ProjectionSpec

    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--spec {ref!r}: {exc}") from exc
    spec = obj if isinstance(obj, ProjectionSpec) else obj()
    if not isinstance(spec, ProjectionSpec):
        raise ConfigError(f"--spec {ref!r} is not a ProjectionSpec")
    return spec


def _required(spec: ProjectionSpec | None) -> ProjectionSpec:
    """The spec a command needs (loaded whenever the command needs it)."""
    if spec is None:
        raise ConfigError("this projection command needs --spec module:ATTR")
    return spec


_READSIDE_OPS = ("verify", "parked", "retry", "skip", "set-offset")


def _projection_op(args: argparse.Namespace) -> int:
    """``projection verify|parked|retry|skip|set-offset`` (operating a projection)."""
    import asyncio

    from raysource.readside.projections import offset_from_str
    from raysource.runtime.actors.cluster import connect_ray

    spec = (
        _load_spec(args.spec) if args.action in ("verify", "set-offset") or not args.name else None
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
    config = _config(args, connect_timeout=5.0)
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
            from raysource.journal.cassandra.journal import CassandraJournal
            from raysource.readside.verify import latest_offset

            journal = await CassandraJournal.connect(config)
            try:
                to = await latest_offset(journal, _required(spec).tag)
            finally:
                await journal.close()
            if to is None:
                return f"{name}: tag {_required(spec).tag!r} has no events; offset unchanged"
        await control.reset(_required(spec), to)
        from raysource.readside.projections import offset_to_str

        return f"{name}: offset set to {offset_to_str(to)}"

    print(asyncio.run(run()))
    return 0


def _projection(args: argparse.Namespace) -> int:
    """``projection``: control read-side projections on a running Ray cluster."""
    import asyncio

    if args.action in _READSIDE_OPS:
        return _projection_op(args)
    if args.action in VERSION_OPS:
        return projection_versions(args, lambda: _config(args, connect_timeout=5.0))

    from raysource.readside.projections import offset_from_str
    from raysource.runtime.actors.cluster import connect_ray

    spec = _load_spec(args.spec) if args.action in ("start", "reset") or not args.name else None
    name = args.name or _required(spec).name
    if spec is not None and spec.name != name:
        raise ConfigError(
            f"--spec names projection {spec.name!r}, not {name!r} (leave the name "
            "out to use the spec's)"
        )
    target = offset_from_str(args.to) if args.action == "reset" else None
    config = _config(args, connect_timeout=5.0)
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


def _view(args: argparse.Namespace) -> int:
    """``view reservations CUSTOMER``: query the example read-side view."""
    import asyncio

    from raysource.examples.reservations_view import reservations_of
    from raysource.journal.cassandra.session import CassandraSession

    config = _config(args, connect_timeout=5.0)

    async def run() -> list[tuple[str, str]]:
        async with CassandraSession(config) as session:
            return await reservations_of(session, config.keyspace, args.customer)

    rows = asyncio.run(run())
    for show, seat in rows:
        print(f"{show}\t{seat}")
    print(f"{args.customer}: {len(rows)} reservation(s)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raysource", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cas = sub.add_parser("cassandra", help="start, stop or check the local Cassandra node")
    cas.add_argument("action", choices=["start", "stop", "status"])
    cas.add_argument(
        "--port", type=_port, default=None, help="CQL port (default 9042 or a free one)"
    )
    cas.add_argument(
        "--keep-data",
        action="store_true",
        help="start on the node's existing data (default: a fresh, empty node)",
    )
    cas.add_argument(
        "--auth",
        action="store_true",
        help="PasswordAuthenticator; a 'raysource' role with a random password in "
        "a 0600 file (printed: the variables naming it)",
    )
    cas.add_argument(
        "--tls", action="store_true", help="client-to-node TLS only, with a private CA (openssl)"
    )
    cas.set_defaults(func=_cassandra)

    schema = sub.add_parser(
        "schema",
        help="print the production CQL schema for operators "
        "(or 'migrate': convert a pre-epoch keyspace)",
    )
    schema.add_argument("action", nargs="?", choices=["migrate"], default=None)
    schema.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (migrate; default RAYSOURCE_CASSANDRA or 127.0.0.1)",
    )
    schema.add_argument("--keyspace", default="raysource")
    schema.add_argument("--rf", type=_count, default=3, help="SimpleStrategy replication factor")
    schema.add_argument(
        "--dc", action="append", default=[], help="DC:RF for NetworkTopologyStrategy (repeatable)"
    )
    schema.set_defaults(func=_schema)

    demo = sub.add_parser("demo", help="run the main job on local Ray with a local Cassandra")
    demo.add_argument("--seconds", type=_positive, default=20.0, help="how long to drive load")
    demo.add_argument(
        "--cassandra", type=_contact, default=None, help="host:port of an existing Cassandra"
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the Cassandra node it started running"
    )
    demo.set_defaults(func=_demo)

    lt = sub.add_parser(
        "loadtest",
        help="drive a workload from Ray actor clients; summary, "
        "consistency check, JSON + PNG report",
    )
    lt.add_argument("--workload", choices=["seats", "ledger"], default="seats")
    lt.add_argument("--entities", type=_count, default=200, help="shows / ledgers (default 200)")
    lt.add_argument("--clients", type=_count, default=2, help="load client actors (default 2)")
    amount = lt.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration", type=_positive, default=None, help="seconds of load (default 10)"
    )
    amount.add_argument(
        "--commands",
        type=_count,
        default=None,
        help="total commands over all clients (instead of --duration)",
    )
    lt.add_argument(
        "--placement",
        choices=["dedicated", "hosted"],
        default="hosted",
        help="one Ray actor per aggregate, or many per shard actor (default)",
    )
    lt.add_argument(
        "--shards",
        type=_count,
        default=None,
        help="override the type's number of shards (hosted: actors)",
    )
    lt.add_argument(
        "--snapshot-every",
        type=_nonneg,
        default=None,
        help="snapshot every N events (0: never; default: the type's policy)",
    )
    lt.add_argument(
        "--guard",
        choices=["on", "off"],
        default="on",
        help="the journal's single-writer fencing (conditional writes)",
    )
    lt.add_argument(
        "--window", type=_count, default=8, help="commands each client keeps in flight (default 8)"
    )
    lt.add_argument(
        "--via",
        choices=["refs", "http", "both"],
        default="refs",
        help="send through entity references (default), through the HTTP seat "
        "service, or both one after the other (side-by-side figures)",
    )
    lt.add_argument(
        "--replicas",
        type=_count,
        default=1,
        help="Ray Serve replicas of the seat service (--via http|both)",
    )
    lt.add_argument(
        "--http-port", type=_nonneg, default=0, help="the service's HTTP port (default: a free one)"
    )
    lt.add_argument("--address", default=None, help="Ray address (default: start local Ray)")
    lt.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, a running local node, "
        "Docker, else a node started from the Maven jars)",
    )
    lt.add_argument("--keyspace", default="raysource")
    lt.add_argument("--results", default="results", help="results folder (default results/)")
    lt.add_argument(
        "--keep-running", action="store_true", help="leave a Cassandra node it started running"
    )
    lt.set_defaults(func=_loadtest)

    srv = sub.add_parser(
        "serve",
        help="the seat service over HTTP (Ray Serve + FastAPI, "
        "OpenAPI at /docs) with its system and view",
    )
    srv.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000)")
    srv.add_argument("--replicas", type=_count, default=1, help="Serve replicas (default 1)")
    srv.add_argument("--system", default="seats", help="the system's name (default seats)")
    srv.add_argument(
        "--seconds",
        type=_positive,
        default=None,
        help="serve this long, then stop (default: until Ctrl-C)",
    )
    srv.add_argument(
        "--demo", action="store_true", help="call every endpoint once, print the answers, and exit"
    )
    srv.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, a running local node, "
        "Docker, else a node started from the Maven jars)",
    )
    srv.add_argument("--keyspace", default="raysource")
    srv.add_argument("--address", default=None, help="Ray address (default: start local Ray)")
    srv.add_argument("--namespace", default="raysource", help="Ray namespace of the system")
    srv.add_argument(
        "--keep-running", action="store_true", help="leave a Cassandra node it started running"
    )
    srv.set_defaults(func=_serve)

    common = _Parser(add_help=False)
    common.add_argument("type", help="aggregate type name (e.g. show)")
    common.add_argument("id", help="entity id")
    common.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, else the local node)",
    )
    common.add_argument("--keyspace", default="raysource")
    common.add_argument(
        "--app",
        default="raysource.examples.seats:SHOW",
        help="module:ATTR naming the application's AggregateType(s)",
    )
    events = sub.add_parser(
        "events", parents=[common], help="print an aggregate's decoded event log (read-only)"
    )
    events.add_argument("--from", dest="from_seq", type=_count, default=1)
    events.add_argument("--to", dest="to_seq", type=_count, default=None)
    events.set_defaults(func=_inspect)
    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="rebuild an aggregate's state event by event, with diffs "
        "(read-only; the live aggregate is not activated)",
    )
    replay.add_argument(
        "--to",
        dest="to_seq",
        type=_count,
        default=None,
        help="stop at this sequence number (default: the last event)",
    )
    replay.add_argument(
        "--snapshot", action="store_true", help="start from the newest snapshot at or below --to"
    )
    replay.set_defaults(func=_inspect)

    state = sub.add_parser(
        "state",
        parents=[common],
        help="ask the live aggregate of a running system for its current "
        "state (read-only; activates it if needed)",
    )
    state.add_argument("--system", required=True, help="the running system's name")
    state.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    state.add_argument("--namespace", default="raysource", help="Ray namespace of the system")
    state.add_argument("--timeout", type=_positive, default=30.0, help="seconds to wait")
    state.set_defaults(func=_state)

    proj = sub.add_parser(
        "projection",
        help="start/stop/pause/resume/reset/status a read-side projection on a running Ray cluster",
    )
    proj.add_argument(
        "action",
        choices=[
            "start",
            "stop",
            "pause",
            "resume",
            "reset",
            "status",
            *_READSIDE_OPS,
            *VERSION_OPS,
        ],
    )
    proj.add_argument("name", nargs="?", default=None, help="projection name (default: --spec's)")
    proj.add_argument(
        "--spec",
        default="raysource.examples.reservations_view:RESERVATIONS",
        help="module:ATTR of a ProjectionSpec (or a function returning one)",
    )
    proj.add_argument(
        "--to",
        default="start",
        help="reset/set-offset target: 'start' or TS_US:SEQ:PID ('end' for set-offset)",
    )
    proj.add_argument("--pid", default=None, help="retry/skip: the parked persistence id")
    add_version_arguments(proj)
    proj.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, else the local node)",
    )
    proj.add_argument("--keyspace", default="raysource")
    proj.add_argument("--address", default="auto", help="Ray cluster address")
    proj.add_argument("--namespace", default="raysource", help="Ray namespace of the workers")
    proj.set_defaults(func=_projection)

    view = sub.add_parser("view", help="query a read-side view")
    view.add_argument("view", choices=["reservations"])
    view.add_argument("customer")
    view.add_argument(
        "--cassandra",
        type=_contact,
        default=None,
        help="host:port (default: $RAYSOURCE_CASSANDRA, else the local node)",
    )
    view.add_argument("--keyspace", default="raysource")
    view.set_defaults(func=_view)

    from raysource.app.cli_forget import register as register_forget

    register_forget(sub, _contact)
    from raysource.app.cli_retention import add_parser as add_retention

    add_retention(sub, _contact, _count)
    from raysource.app import cli_doctor, cli_status

    cli_doctor.register(sub, _contact, _positive)
    cli_status.register(sub, _positive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RaysourceError as exc:
        # one line: a multi-line message (a CQL statement, a node's log tail after "---")
        # is cut at the tail and folded
        text = " ".join(str(exc).split("\n---", 1)[0].split())
        print(f"raysource: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
