"""The ``raysource`` command line: one CLI, subcommands per job.

This module builds the parser (every argument checked before anything connects: bad input is
one line and exit 2) and registers each command's handler from its module in ``raysource.cli``;
the work itself lives in the library functions those handlers call.

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
    raysource projection deploy|switch|rollback|drop|versions NAME ...  (cli/projection_versions)
    raysource view reservations CUSTOMER [--cassandra H:P] [--keyspace K]

    raysource forget|retention|doctor|status ...  (registered from their modules below)

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

from raysource.cli import aggregate, node, projection, runs

# the parser and argument types under the names the command modules' registration hooks below
# are called with (``register(sub, _contact)``)
from raysource.cli.args import Parser as _Parser
from raysource.cli.args import contact as _contact
from raysource.cli.args import count as _count
from raysource.cli.args import nonneg as _nonneg
from raysource.cli.args import port as _port
from raysource.cli.args import positive as _positive
from raysource.cli.projection import READSIDE_OPS as _READSIDE_OPS
from raysource.cli.projection_versions import VERSION_OPS, add_version_arguments
from raysource.journal.errors import RaysourceError


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
    cas.set_defaults(func=node.cassandra)

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
    schema.set_defaults(func=node.schema)

    demo = sub.add_parser("demo", help="run the main job on local Ray with a local Cassandra")
    demo.add_argument("--seconds", type=_positive, default=20.0, help="how long to drive load")
    demo.add_argument(
        "--cassandra", type=_contact, default=None, help="host:port of an existing Cassandra"
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the Cassandra node it started running"
    )
    demo.set_defaults(func=runs.demo)

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
    lt.set_defaults(func=runs.loadtest)

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
    srv.set_defaults(func=runs.serve)

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
    events.set_defaults(func=aggregate.inspect)
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
    replay.set_defaults(func=aggregate.inspect)

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
    state.set_defaults(func=aggregate.state)

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
    proj.set_defaults(func=projection.projection)

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
    view.set_defaults(func=projection.view)

    from raysource.cli.forget import register as register_forget

    register_forget(sub, _contact)
    from raysource.cli.retention import add_parser as add_retention

    add_retention(sub, _contact, _count)
    from raysource.cli import doctor as cli_doctor
    from raysource.cli import status as cli_status

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
