"""The CLI's bad-input table: every case exits non-zero (2) with exactly one line on stderr, no
traceback, and finishes (no hang). Each case runs ``python -m raysource.cli`` in its own
process, as an operator would, with ``RAYSOURCE_HOME`` pointing at an empty directory so no
local node is found by accident.

The cases are the ones issue 14 found (an unresolvable host, ``--port 99999``/``0``, an
unreachable ``--address``, a token-auth cluster joined without ``RAY_AUTH_MODE``,
``loadtest --duration 0``, ``projection status <unknown>``, the README's ``projection start
reservations``) plus more of the same kind. The Ray cases join the session's real local Ray
(which requires Ray's token auth), the Cassandra ones reach the session's real node.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 45.0  # "no hang": a case still running after this is a failure

# (id, argv, a fragment of the one error line). {cas} = the session's Cassandra,
# {ks} = this module's keyspace, {gcs} = the session's Ray GCS address, {ns} = its namespace.
OFFLINE = [
    ("no-command", [], "arguments are required: command"),
    ("unknown-command", ["bogus"], "invalid choice"),
    ("port-too-big", ["cassandra", "start", "--port", "99999"], "--port: must be > 0"),
    ("port-zero", ["cassandra", "start", "--port", "0"], "--port: must be > 0"),
    ("port-negative", ["cassandra", "status", "--port", "-5"], "--port"),
    ("port-not-a-number", ["cassandra", "start", "--port", "x"], "not an integer"),
    ("cassandra-bad-action", ["cassandra", "restart"], "invalid choice"),
    ("schema-rf-zero", ["schema", "--rf", "0"], "--rf: must be > 0"),
    ("schema-dc-no-rf", ["schema", "--dc", "dc1"], "--dc expects DC:RF"),
    ("schema-dc-rf-zero", ["schema", "--dc", "dc1:0"], "invalid datacenter replication"),
    ("schema-bad-keyspace", ["schema", "--keyspace", "x; DROP TABLE y"], "invalid keyspace"),
    ("schema-dc-bad-name", ["schema", "--dc", "d c:3"], "invalid datacenter"),
    ("loadtest-duration-zero", ["loadtest", "--duration", "0"], "--duration: must be > 0"),
    ("loadtest-duration-nan", ["loadtest", "--duration", "nan"], "--duration"),
    ("loadtest-duration-text", ["loadtest", "--duration", "abc"], "not a number"),
    ("loadtest-entities-zero", ["loadtest", "--entities", "0"], "--entities: must be > 0"),
    ("loadtest-clients-negative", ["loadtest", "--clients", "-1"], "--clients"),
    ("loadtest-window-zero", ["loadtest", "--window", "0"], "--window"),
    ("loadtest-shards-zero", ["loadtest", "--shards", "0"], "--shards"),
    ("loadtest-snapshot-negative", ["loadtest", "--snapshot-every", "-1"], "--snapshot-every"),
    ("loadtest-commands-zero", ["loadtest", "--commands", "0"], "--commands"),
    (
        "loadtest-duration-and-commands",
        ["loadtest", "--duration", "1", "--commands", "5"],
        "not allowed with",
    ),
    ("loadtest-unknown-workload", ["loadtest", "--workload", "bank"], "invalid choice"),
    ("loadtest-contact-bad-port", ["loadtest", "--cassandra", "h:99999"], "invalid port"),
    ("demo-seconds-zero", ["demo", "--seconds", "0"], "--seconds: must be > 0"),
    ("retention-bad-action", ["retention", "purge", "show"], "invalid choice"),
    ("retention-no-type", ["retention", "plan"], "required: type"),
    ("retention-rate-zero", ["retention", "run", "show", "--rows-per-s", "0"], "--rows-per-s"),
    ("retention-unknown-type", ["retention", "plan", "nosuch"], "unknown aggregate type"),
    ("retention-bad-app", ["retention", "plan", "show", "--app", "nosuch:X"], "cannot import"),
    (
        "forget-system-with-verify",
        ["forget", "alice", "--verify", "--system", "shop"],
        "--system names a running system, and is not for --verify",
    ),
    (
        "projection-switch-no-version",
        ["projection", "switch", "reservations-by-customer"],
        "needs a version number",
    ),
    ("projection-deploy-version-zero", ["projection", "deploy", "x", "--version", "0"], ">= 1"),
    ("projection-drop-no-version", ["projection", "drop", "x"], "needs a version number"),
    (
        "projection-switch-bad-spec",
        ["projection", "switch", "x", "2", "--spec", "no:pe"],
        "'no:pe'",
    ),
    ("demo-bad-contact", ["demo", "--cassandra", "a b"], "invalid contact point"),
    ("events-no-cassandra", ["events", "show", "x"], "no Cassandra to read from"),
    ("events-from-zero", ["events", "show", "x", "--from", "0"], "--from: must be > 0"),
    ("events-empty-id", ["events", "show", ""], "entity id"),
    ("events-unknown-type", ["events", "nosuchtype", "x"], "unknown aggregate type"),
    (
        "events-bad-app",
        ["events", "show", "x", "--app", "nosuch.module:X"],
        "cannot import the application module",
    ),
    (
        "events-bad-keyspace",
        ["events", "show", "x", "--cassandra", "127.0.0.1:9042", "--keyspace", "x;drop"],
        "invalid keyspace",
    ),
    (
        "events-contact-spaces",
        ["events", "show", "x", "--cassandra", "a b"],
        "invalid contact point",
    ),
    (
        "events-contact-port-text",
        ["events", "show", "x", "--cassandra", "host:port"],
        "invalid contact point",
    ),
    ("events-env-contact-bad", ["events", "show", "x"], "RAYSOURCE_CASSANDRA"),
    ("replay-to-zero", ["replay", "show", "x", "--to", "0"], "--to: must be > 0"),
    (
        "state-timeout-negative",
        ["state", "show", "x", "--system", "s", "--timeout", "-1"],
        "--timeout",
    ),
    ("state-no-system", ["state", "show", "x"], "--system"),
    ("doctor-timeout-zero", ["doctor", "--timeout", "0"], "--timeout"),
    ("doctor-contact-bad", ["doctor", "--cassandra", "host:port"], "invalid contact point"),
    ("status-no-system", ["status"], "--system"),
    ("projection-bad-action", ["projection", "restart"], "invalid choice"),
    ("view-unknown-view", ["view", "orders", "bob"], "invalid choice"),
    (
        "cassandra-user-without-password",
        ["events", "show", "x", "--cassandra", "127.0.0.1:1"],
        "RAYSOURCE_CASSANDRA_USERNAME is set but",
    ),
]
ENV_FOR = {
    "events-env-contact-bad": {"RAYSOURCE_CASSANDRA": "db:notaport"},
    "cassandra-user-without-password": {"RAYSOURCE_CASSANDRA_USERNAME": "app"},
}

NETWORK = [
    (
        "retention-missing-keyspace",
        ["retention", "verify", "show", "--cassandra", "{cas}", "--keyspace", "no_such_ks_ret"],
        "no_such_ks_ret",
    ),
    (
        "unresolvable-host",
        ["view", "reservations", "bob", "--cassandra", "no-such-host.invalid:9042"],
        "no contact point resolves",
    ),
    (
        "cassandra-refused",
        ["events", "show", "x", "--cassandra", "127.0.0.1:{closed}"],
        "Cassandra unavailable",
    ),
    (
        "missing-keyspace",
        ["events", "show", "x", "--cassandra", "{cas}", "--keyspace", "no_such_keyspace_here"],
        "keyspace",
    ),
    (
        "view-missing-keyspace",
        [
            "view",
            "reservations",
            "bob",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "no_such_keyspace_here",
        ],
        "no_such_keyspace_here",
    ),
    (
        "ray-address-refused",
        [
            "state",
            "show",
            "x",
            "--system",
            "s",
            "--cassandra",
            "{cas}",
            "--address",
            "127.0.0.1:{closed}",
        ],
        "no Ray cluster reachable",
    ),
    (
        "ray-address-unresolvable",
        [
            "projection",
            "status",
            "p",
            "--cassandra",
            "{cas}",
            "--address",
            "no-such-host.invalid:6379",
        ],
        "no Ray cluster reachable",
    ),
    (
        "ray-address-not-ray",
        ["projection", "status", "p", "--cassandra", "{cas}", "--address", "{cas}"],
        "does not answer like a Ray cluster",
    ),
    (
        "loadtest-ray-address-not-ray",
        ["loadtest", "--cassandra", "{cas}", "--duration", "1", "--address", "{cas}"],
        "does not answer like a Ray",
    ),
    (
        "loadtest-ray-address-refused",
        ["loadtest", "--cassandra", "{cas}", "--duration", "1", "--address", "127.0.0.1:{closed}"],
        "no Ray cluster reachable",
    ),
    (
        "doctor-ray-address-garbage",
        ["doctor", "--cassandra", "{cas}", "--address", "nonsense"],
        "invalid Ray address",
    ),
    (
        "ray-address-garbage",
        ["state", "show", "x", "--system", "s", "--cassandra", "{cas}", "--address", "nonsense"],
        "invalid Ray address",
    ),
]

# joins the session's token-auth Ray WITHOUT RAY_AUTH_MODE in the environment
RAY = [
    (
        "ray-join-token-found",
        [
            "state",
            "show",
            "x",
            "--system",
            "nosuchsystem",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
            "--namespace",
            "{ns}",
        ],
        "no raysource system nosuchsystem",
    ),
    (
        "ray-join-wrong-token",
        [
            "state",
            "show",
            "x",
            "--system",
            "s",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
        ],
        "refused this client's auth token",
    ),
    (
        "ray-join-no-token",
        [
            "state",
            "show",
            "x",
            "--system",
            "s",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
        ],
        "refused this client's auth token",
    ),
    (
        "projection-status-unknown",
        [
            "projection",
            "status",
            "no-such-projection",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
            "--namespace",
            "{ns}",
        ],
        "'no-such-projection'",
    ),
    (
        "projection-stop-unknown",
        [
            "projection",
            "stop",
            "no-such-projection",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
            "--namespace",
            "{ns}",
        ],
        "'no-such-projection'",
    ),
    (
        "projection-readme-name",
        [
            "projection",
            "start",
            "reservations",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
            "--namespace",
            "{ns}",
        ],
        "names projection 'reservations-by-customer'",
    ),
    (
        "projection-reset-bad-offset",
        [
            "projection",
            "reset",
            "--to",
            "garbage",
            "--cassandra",
            "{cas}",
            "--keyspace",
            "{ks}",
            "--address",
            "{gcs}",
        ],
        "not an offset",
    ),
    (
        "projection-bad-spec",
        ["projection", "start", "--spec", "nosuch:X", "--address", "{gcs}"],
        "--spec 'nosuch:X'",
    ),
]
ENV_FOR.update(
    {
        "ray-join-wrong-token": {"RAY_AUTH_TOKEN": "not-the-cluster-token"},
        "ray-join-no-token": {"RAY_AUTH_TOKEN_PATH": "/nonexistent/raysource-test-token"},
    }
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case: str, argv: list[str], home: Path, **fmt: str) -> tuple[int, str, float]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAYSOURCE_", "RAY_AUTH_"))
    }  # as an operator's shell would be
    env["RAYSOURCE_HOME"] = str(home)
    env.update(ENV_FOR.get(case, {}))
    args = [a.format(**fmt) for a in argv]
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "raysource.cli", *args],
            capture_output=True,
            text=True,
            timeout=HANG_S,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return -1, f"`raysource {' '.join(args)}` still running after {HANG_S:.0f} s", HANG_S
    return out.returncode, out.stderr, time.monotonic() - t0


def _run_all(table, home: Path, **fmt: str) -> dict[str, tuple[int, str, float]]:
    """Every case of ``table``, four processes at a time (each waits mostly on imports and
    sockets), keyed by case id."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(_run, case, argv, home, **fmt) for case, argv, _ in table}
        return {case: f.result() for case, f in futures.items()}


def _check(case: str, result: tuple[int, str, float], fragment: str, **fmt: str) -> None:
    code, stderr, _took = result
    assert code != -1, f"{case}: {stderr}"  # hung
    assert "Traceback" not in stderr, f"{case}: traceback:\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, f"{case}: exit {code}, stderr {lines}"
    assert len(lines) == 1, f"{case}: {len(lines)} stderr lines: {lines}"
    assert lines[0].startswith("raysource") and "error: " in lines[0], lines[0]
    assert fragment.format(**fmt) in lines[0], f"{case}: {lines[0]!r}"


@pytest.fixture(scope="module")
def offline_results(tmp_path_factory):
    return _run_all(OFFLINE, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def network_fmt(cassandra_contact, cassandra_keyspace) -> dict[str, str]:
    host, port = cassandra_contact
    return {"cas": f"{host}:{port}", "ks": cassandra_keyspace, "closed": str(_closed_port())}


@pytest.fixture(scope="module")
def network_results(tmp_path_factory, network_fmt):
    return _run_all(NETWORK, tmp_path_factory.mktemp("home"), **network_fmt)


@pytest.fixture(scope="module")
def ray_fmt(ray_local, cassandra_contact, cassandra_keyspace) -> dict[str, str]:
    ctx = ray_local.get_runtime_context()
    host, port = cassandra_contact
    return {
        "cas": f"{host}:{port}",
        "ks": cassandra_keyspace,
        "gcs": ctx.gcs_address,
        "ns": ctx.namespace,
    }


@pytest.fixture(scope="module")
def ray_results(tmp_path_factory, ray_fmt):
    return _run_all(RAY, tmp_path_factory.mktemp("home"), **ray_fmt)


@pytest.mark.parametrize("case,argv,fragment", OFFLINE, ids=[c[0] for c in OFFLINE])
def test_offline_bad_input(case, argv, fragment, offline_results) -> None:
    _check(case, offline_results[case], fragment)


@pytest.mark.cassandra
@pytest.mark.parametrize("case,argv,fragment", NETWORK, ids=[c[0] for c in NETWORK])
def test_unreachable_or_wrong_targets(case, argv, fragment, network_results, network_fmt) -> None:
    _check(case, network_results[case], fragment, **network_fmt)


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.parametrize("case,argv,fragment", RAY, ids=[c[0] for c in RAY])
def test_ray_joins(case, argv, fragment, ray_results, ray_fmt) -> None:
    _check(case, ray_results[case], fragment, **ray_fmt)
