"""The test session's local Ray: one way to start it, and to start it again after a test that
needed a Ray of its own (a multi-node cluster, job-level options).

Kept out of ``conftest.py`` on purpose: two conftest files exist (``tests/`` and
``tests/contract/``) and both import as the module ``conftest``, so ``from conftest import``
reaches whichever loaded first. A support module has one name.
"""

from __future__ import annotations

import socket
import uuid

METRICS_PORT: list[int] = []  # the session Ray's Prometheus port (its metrics agent), once known


def init_local(namespace: str, **options: object) -> None:
    """``ray.init`` of a local Ray as the tests start it (never joining another process's Ray
    on this host; 4 CPUs; no dashboard; quiet), with ``options`` on top."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        namespace=namespace,
        **options,
    )


def start(namespace: str | None = None) -> None:
    """Start the session's local Ray. Its metrics agent exports Prometheus on one port for the
    whole session: the first start picks a free port, a restart reuses it (tests scrape it:
    ``conftest.ray_metrics_port``)."""
    if not METRICS_PORT:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            METRICS_PORT.append(sock.getsockname()[1])
    init_local(
        namespace or f"raysource-test-{uuid.uuid4().hex[:6]}",
        _metrics_export_port=METRICS_PORT[0],
    )
