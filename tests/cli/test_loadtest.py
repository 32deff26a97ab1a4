"""The load engine on real Ray (clients are Ray actors) and real Cassandra: a short seats run
gives a result JSON whose counts add up and a real PNG, passes the consistency check, and leaves
no actor of its system running; a ledger run by command count sends exactly that many; the CLI
lists its parameters. Pure parts (workloads, aggregation) are tested without Ray."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from raysource.cli.main import build_parser, main
from raysource.journal.errors import ConfigError
from raysource.loadtest.client import ClientResult
from raysource.loadtest.driver import LoadTestParams, run_loadtest
from raysource.loadtest.report import aggregate
from raysource.loadtest.workloads import make_workload, zipf_cum_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _contact(cassandra_contact: tuple[str, int]) -> str:
    host, port = cassandra_contact
    return f"{host}:{port}"


def _check_counts(result: dict) -> None:
    f = result["figures"]
    assert f["sent"] > 0
    assert f["accepted"] + f["rejected"] + f["errors"] == f["sent"]
    s = result["series"]
    assert sum(s["accepted"]) + sum(s["rejected"]) + sum(s["errors"]) == f["sent"]
    assert sum(result["latency_histogram"]["counts"]) == f["sent"]
    assert sum(k["count"] for k in f["by_kind"].values()) == f["sent"]
    assert (
        f["latency_ms"]["p50"]
        <= f["latency_ms"]["p95"]
        <= f["latency_ms"]["p99"]
        <= f["latency_ms"]["max"]
    )


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_seats_loadtest_writes_consistent_json_and_png(
    ray_local, cassandra_contact, cassandra_keyspace, tmp_path
):
    params = LoadTestParams(
        workload="seats",
        entities=20,
        clients=2,
        duration_s=3.0,
        placement="hosted",
        shards=4,
        keyspace=cassandra_keyspace,
        results_dir=str(tmp_path),
        sample=6,
    )
    report = run_loadtest(params, _contact(cassandra_contact), progress=False)

    result = json.loads(report.json_path.read_text())
    assert report.json_path == tmp_path / report.run_id / "result.json"
    _check_counts(result)
    assert result["parameters"]["entities"] == 20
    assert result["parameters"]["placement"] == "hosted"
    assert set(result["figures"]["by_kind"]) <= {"reserve", "cancel", "query"}
    assert result["figures"]["by_kind"]["reserve"]["accepted"] > 0
    assert result["figures"]["errors"] == 0, result["error_samples"]
    assert report.png_path.read_bytes()[:8] == PNG_MAGIC

    assert report.consistency.ok, report.consistency.problems
    assert result["consistency"]["ok"] is True
    assert report.consistency.replay_equal == len(report.consistency.sampled) == 6
    assert report.consistency.double_bookings == 0

    gc = result["figures"]["group_commit"]
    assert gc["hosts"] >= 1 and gc["writes"] >= 1

    assert report.leftover_actors == []
    left = [
        a["name"]
        for a in ray_local.util.list_named_actors(all_namespaces=True)
        if report.system in a["name"]
    ]
    assert left == []


@pytest.mark.ray
@pytest.mark.cassandra
@pytest.mark.timeout(120)
def test_ledger_by_command_count_dedicated_guard_off(
    ray_local, cassandra_contact, cassandra_keyspace, tmp_path
):
    params = LoadTestParams(
        workload="ledger",
        entities=3,
        clients=2,
        duration_s=None,
        commands=101,
        placement="dedicated",
        guard=False,
        snapshot_every=10,
        keyspace=cassandra_keyspace,
        results_dir=str(tmp_path),
        sample=3,
    )
    report = run_loadtest(params, _contact(cassandra_contact), progress=False)
    result = report.result
    _check_counts(result)
    assert result["figures"]["sent"] == 101
    assert result["figures"]["accepted"] == 101
    assert result["aggregate_type"]["snapshot_every"] == 10
    assert report.consistency.ok, report.consistency.problems
    assert report.consistency.counts_equal == 3
    assert report.leftover_actors == []


def test_cli_loadtest_help_lists_parameters(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--workload",
        "--entities",
        "--clients",
        "--duration",
        "--commands",
        "--placement",
        "--snapshot-every",
        "--guard",
        "--address",
        "--cassandra",
        "--keyspace",
        "--results",
    ):
        assert flag in out
    args = build_parser().parse_args(["loadtest", "--commands", "50", "--guard", "off"])
    assert args.commands == 50 and args.duration is None and args.guard == "off"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--commands", "5", "--duration", "3"])


def test_params_are_validated():
    with pytest.raises(ConfigError):
        LoadTestParams(duration_s=None, commands=None)
    with pytest.raises(ConfigError):
        LoadTestParams(workload="nope")
    with pytest.raises(ConfigError):
        LoadTestParams(placement="everywhere")


def test_seats_workload_is_skewed_and_mixed():
    w = make_workload("seats", run_id="r", entities=50, shards=4, snapshot_every=0)
    assert w.aggregate_type.number_of_shards == 4
    assert not w.aggregate_type.snapshot.enabled
    src = w.generator(0, seed=1)
    shows, kinds = Counter(), Counter()
    for _ in range(5000):
        eid, cmd, kind = src.next()
        shows[eid] += 1
        kinds[kind] += 1
        src.outcome(eid, cmd, kind, accepted=True)
    ids = w.entity_ids()
    assert shows[ids[0]] > 5 * shows[ids[-1]]  # Zipf: the first show is the hot one
    assert kinds["reserve"] > kinds["cancel"] > 0 and kinds["query"] > 0
    cum = zipf_cum_weights(3, 0.0)
    assert cum == [1.0, 2.0, 3.0]


def test_aggregate_adds_up_without_ray():
    rng = random.Random(3)
    records = []
    for i in range(3):
        r = ClientResult(index=i, finished_at=10.0)
        for _ in range(200):
            o = rng.randrange(3)
            kind = rng.choice(["reserve", "query"])
            r.sent += 1
            r.latencies_ms.setdefault(kind, []).append(rng.uniform(0.5, 80))
            counts = r.outcomes.setdefault(kind, {"accepted": 0, "rejected": 0, "errors": 0})
            counts[("accepted", "rejected", "errors")[o]] += 1
            r.per_second.setdefault(rng.randrange(5), [0, 0, 0])[o] += 1
        records.append(r)
    result = aggregate(records, elapsed_s=5.0)
    result["parameters"] = {}
    _check_counts(result)
    assert result["figures"]["commands_per_s"] == 120.0
