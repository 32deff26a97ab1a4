"""Shipping the package to Ray workers: ``runtime_env={"py_modules": [raysource]}`` carries the
whole package, every room included, and a worker runs it from the shipped copy.

Ray packs the folder of ``raysource.__file__``. With setuptools' default editable install that
folder would be the repository's facade alone (two files); with the strict install it is the
link tree, which holds every room. The driver runs in a fresh process (its own local Ray, outside
the repository) so that the session's Ray is not touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray

DRIVER = """
import json, sys, uuid
import ray
import raysource

ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         namespace=f"py-modules-{uuid.uuid4().hex[:6]}",
         runtime_env={"py_modules": [raysource]})

@ray.remote
def in_worker():
    import sys
    import raysource
    from raysource.examples.seats import SHOW, CreateShow, GetShow, ReserveSeat
    from raysource.testing.testkit import AggregateTestKit
    import raysource.journal.cassandra.journal, raysource.sharding.system, raysource.readside.views

    kit = AggregateTestKit(SHOW, entity_id="s1")
    kit.run(CreateShow(10))
    kit.run(ReserveSeat("A3", "ada"))
    state = kit.run(GetShow()).reply
    files = {name: getattr(mod, "__file__", None) for name, mod in list(sys.modules.items())
             if name == "raysource" or name.startswith("raysource.")}
    return {"files": files, "state": repr(state)}

try:
    print(json.dumps(ray.get(in_worker.remote(), timeout=300)))
finally:
    ray.shutdown()
"""


def test_the_package_ships_to_ray_workers_with_py_modules(tmp_path: Path) -> None:
    import raysource

    shipped = Path(raysource.__file__).parent
    assert {p.name for p in shipped.iterdir()} >= {"journal", "runtime", "sharding", "testing"}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ada" in answer["state"], answer["state"]
    files = answer["files"]
    for room in (
        "journal",
        "journal.cassandra",
        "runtime",
        "runtime.actors",
        "sharding",
        "readside",
        "testing",
        "examples",
        "snapshots",
        "timers",
    ):
        assert f"raysource.{room}" in files, room
    # every module came from the copy Ray unpacked for the worker, none from this checkout
    local = [
        name
        for name, f in files.items()
        if f is None or "runtime_resources" not in f or f.startswith((str(ROOT), str(shipped)))
    ]
    assert not local, {name: files[name] for name in local}
