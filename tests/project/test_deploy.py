"""deploy/: every manifest parses and carries the fields its tool requires, and the security and
availability settings issue 14 asked for: Ray token auth on (``ray up`` and KubeRay), no
dashboard reachable without it, Cassandra with password authentication and TLS-only clients,
a PodDisruptionBudget and pod anti-affinity, several contact points, pinned versions, no secret
in a manifest; the production CQL file is exactly what `raysource schema` prints; the runbook's
batch-size advice is the corrected one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from raysource.journal.cassandra.config import CassandraConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PINNED_RAY = "2.60.0"


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def _by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in _docs(path)}


def _no_unpinned_install(text: str) -> None:
    """Every requirement a ``pip install`` names is pinned (``==``) or a local wheel/path."""
    import shlex

    flat = re.sub(r"\\?\n\s*", " ", text)
    for match in re.finditer(r"pip install (.*?)(?:&&|$|\n|#|;)", flat):
        for token in shlex.split(match.group(1).replace("'", "")):
            if token.startswith("-") or "/" in token or token.endswith(".whl"):
                continue
            assert "==" in token, f"unpinned requirement {token!r} in {match.group(0)!r}"
    assert ":latest" not in text


def test_ray_up_cluster_config() -> None:
    path = DEPLOY / "ray" / "cluster.yaml"
    (cfg,) = _docs(path)
    for key in (
        "cluster_name",
        "provider",
        "auth",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "setup_commands",
        "file_mounts",
    ):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    starts = [
        c
        for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert any("ray start --head" in c for c in starts) and len(starts) == 2
    for cmd in starts:  # token auth on every node, the same token file copied to each
        assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    (head,) = [c for c in starts if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in path.read_text()
    setup = "\n".join(cfg["setup_commands"])
    assert f'"ray[default]=={PINNED_RAY}"' in setup and "raysource-0.1.0" in setup
    _no_unpinned_install(path.read_text())
    env_lines = re.findall(r"'export (\w+)=([^']*)'", setup)
    env = dict(env_lines)
    assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), env
    cassandra = CassandraConfig.from_env(environ=env)
    assert len(cassandra.contact_points) >= 3 and cassandra.tls is not None
    assert cassandra.password_file and cassandra.local_dc == "dc1"


def _containers(spec: dict) -> list[dict]:
    return spec["template"]["spec"]["containers"]


def test_kuberay_raycluster() -> None:
    path = DEPLOY / "kuberay" / "raycluster.yaml"
    (rc,) = _docs(path)
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == PINNED_RAY
    assert rc["spec"]["authOptions"]["mode"] == "token"  # KubeRay sets RAY_AUTH_* everywhere
    head_group = rc["spec"]["headGroupSpec"]
    assert head_group.get("serviceType", "ClusterIP") == "ClusterIP"  # dashboard not exposed
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (head,) = _containers(head_group)
    (worker,) = _containers(group)
    assert head["image"] == worker["image"] and re.search(r":\d+\.\d+\.\d+$", head["image"])
    assert "pip install" not in path.read_text()  # the image is built, nothing installed at start
    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{PINNED_RAY}-py311" in dockerfile
    _no_unpinned_install(dockerfile)
    for container, pod in (
        (head, head_group["template"]["spec"]),
        (worker, group["template"]["spec"]),
    ):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), env
        config = CassandraConfig.from_env(environ={k: v for k, v in env.items() if v})
        assert len(config.contact_points) >= 3 and config.local_dc == "dc1"
        assert config.tls is not None and config.tls.check_hostname
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        for file in (config.password_file, config.tls.ca_file):
            folder = str(Path(file).parent)
            assert folder in mounted and mounted[folder] in secrets, file


def test_cassandra_statefulset() -> None:
    path = DEPLOY / "cassandra" / "statefulset.yaml"
    kinds = _by_kind(path)
    svc, sts, pdb, cm = (
        kinds["Service"],
        kinds["StatefulSet"],
        kinds["PodDisruptionBudget"],
        kinds["ConfigMap"],
    )
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == labels == svc["spec"]["selector"]
    # availability: one replica per k8s node, never two down by a voluntary disruption
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 2
    pod = sts["spec"]["template"]["spec"]
    (rule,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"] == labels
    (container,) = pod["containers"]
    assert container["image"] == "cassandra:5.0.8"
    assert {p["containerPort"] for p in container["ports"]} >= {7000, 9042}
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in container["volumeMounts"]
    }
    # security: password authentication, TLS-only clients, no secret in the manifest
    conf = yaml.safe_load(cm["data"]["cassandra.yaml"])
    assert conf["authenticator"] == "PasswordAuthenticator"
    assert conf["authorizer"] == "CassandraAuthorizer"
    tls = conf["client_encryption_options"]
    assert tls["enabled"] is True and tls["optional"] is False
    assert tls["keystore_password"] == "__KEYSTORE_PASSWORD__"  # filled in from the Secret
    start = " ".join(container["args"])
    assert "keystore-password" in start and "__KEYSTORE_PASSWORD__" in start
    assert Path(tls["keystore"]).name in start
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls_mount = next(m for m in container["volumeMounts"] if "tls" in m["mountPath"])
    assert volumes[tls_mount["name"]]["secret"]["secretName"] == "cassandra-tls"
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "cqlsh" not in probe  # a plain cqlsh cannot log in any more


def test_production_schema_file_matches_cli() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "raysource.cli", "schema", "--dc", "dc1:3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert (DEPLOY / "cassandra" / "schema.cql").read_text() == printed
    assert "'class': 'NetworkTopologyStrategy', 'dc1': 3" in printed


def test_schema_cli_refuses_unsafe_keyspace() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raysource.cli", "schema", "--keyspace", "x; DROP TABLE y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "invalid keyspace" in out.stderr and out.stdout == ""


def test_runbook_covers_security_and_the_corrected_batch_advice() -> None:
    text = (DEPLOY / "RUNBOOK.md").read_text()
    assert "single-partition" in text and "exempt" in text
    assert "Raise\n  `batch_size_fail_threshold`" not in text  # the old, wrong advice
    for topic in (
        "RAY_AUTH_MODE=token",
        "PasswordAuthenticator",
        "cassandra-tls",
        "cassandra-credentials",
        "PodDisruptionBudget",
        "RAYSOURCE_CASSANDRA_PASSWORD_FILE",
    ):
        assert topic in text, topic
