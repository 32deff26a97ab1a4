"""A multi-node Ray cluster on this machine for the cluster tests (``ray.cluster_utils.Cluster``:
a head and ``workers`` worker nodes of one CPU each, fast health checks so a removed node is
noticed in seconds). The session's local Ray (``conftest.ray_local``), if up, is shut down to
make room and restarted in its namespace afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import ray
from ray.cluster_utils import Cluster

from raysource.sharding.ray_nodes import FAST_HEALTH_CHECKS


@contextlib.contextmanager
def ray_cluster(workers: int, namespace_prefix: str) -> Iterator[tuple[Cluster, list, str]]:
    """(cluster, worker nodes, namespace), the driver connected in that namespace."""
    restore_ns = None
    if ray.is_initialized():
        restore_ns = ray.get_runtime_context().namespace
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "_system_config": FAST_HEALTH_CHECKS,
            "include_dashboard": False,
        },
    )
    try:
        nodes = [c.add_node(num_cpus=1) for _ in range(workers)]
        c.wait_for_nodes()
        ns = f"{namespace_prefix}-{uuid.uuid4().hex[:6]}"
        ray.init(address=c.address, namespace=ns, log_to_driver=False, configure_logging=False)
        yield c, nodes, ns
    finally:
        ray.shutdown()
        c.shutdown()
        if restore_ns is not None:
            import session_ray

            session_ray.start(restore_ns)
