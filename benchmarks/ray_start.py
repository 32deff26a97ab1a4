"""How a benchmark starts Ray: a local instance of its own, or a driver on a running Ray.

By default :func:`init` starts a local Ray (``address="local"``: never joins another process's
Ray on this host) with the benchmark's options. With :data:`ADDRESS_ENV` set (the test suite's
benchmark smoke runs set it to the session's Ray, ``tests/support/bench_smoke.py``) it connects
to that Ray instead and keeps only the job-level options (namespace, runtime_env, logging):
node-level ones (``num_cpus``, the dashboard) belong to whoever started that Ray. The figures
of such a run share the machine with the rest of that Ray; the smoke runs only prove that each
benchmark runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

#: The address of a running Ray to join instead of starting one (e.g. ``127.0.0.1:6379``).
ADDRESS_ENV = "RAYSOURCE_BENCH_RAY_ADDRESS"
ROOT = Path(__file__).resolve().parents[1]  # the repository (holds ``benchmarks``)
_JOB_OPTIONS = ("runtime_env", "log_to_driver", "configure_logging")


def init(namespace: str, **options: Any) -> None:
    """``ray.init`` for a benchmark: its own local Ray with ``options``, or the Ray named by
    :data:`ADDRESS_ENV` with the job-level ones of ``options``."""
    address = os.environ.get(ADDRESS_ENV)
    if address:
        job = {k: v for k, v in options.items() if k in _JOB_OPTIONS}
        # that Ray's workers start elsewhere: this job's find the benchmarks package (a
        # worker setup hook of tracing_bench lives there)
        runtime_env = dict(job.pop("runtime_env", None) or {})
        path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        runtime_env["env_vars"] = {
            **runtime_env.get("env_vars", {}),
            "PYTHONPATH": os.pathsep.join(path),
        }
        ray.init(address=address, namespace=namespace, runtime_env=runtime_env, **job)
    else:
        ray.init(address="local", namespace=namespace, **options)
