"""deploy/: every manifest parses and carries the fields its tool requires; the production CQL
file is exactly what `raysource schema` prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def test_ray_up_cluster_config() -> None:
    (cfg,) = _docs(DEPLOY / "ray" / "cluster.yaml")
    for key in ("cluster_name", "provider", "auth", "head_start_ray_commands",
                "worker_start_ray_commands", "setup_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


def test_kuberay_raycluster() -> None:
    (rc,) = _docs(DEPLOY / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("rayproject/ray:")
    envs = {e["name"]: e["value"] for e in head["env"]}
    assert "RAYSOURCE_CASSANDRA" in envs
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["template"]["spec"]["containers"][0]["image"] == head["image"]


def test_cassandra_statefulset() -> None:
    svc, sts = _docs(DEPLOY / "cassandra" / "statefulset.yaml")
    assert svc["kind"] == "Service" and svc["spec"]["clusterIP"] == "None"
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == labels == svc["spec"]["selector"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in container["ports"]} >= {7000, 9042}
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in container["volumeMounts"]
    }


def test_production_schema_file_matches_cli() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "raysource.app.cli", "schema", "--dc", "dc1:3"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert (DEPLOY / "cassandra" / "schema.cql").read_text() == printed
    assert "'class': 'NetworkTopologyStrategy', 'dc1': 3" in printed


def test_schema_cli_refuses_unsafe_keyspace() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raysource.app.cli", "schema", "--keyspace", "x; DROP TABLE y"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "invalid keyspace" in out.stderr and out.stdout == ""
