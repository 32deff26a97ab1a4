"""Environment switches of the Ray workers (issue 23 item 9), on real Ray: a host actor started
with ``RAYSOURCE_LIVE_READSIDE=0`` and ``RAYSOURCE_LOG_JSON=1`` in its environment has no live
publisher and logs one JSON object per line; a host actor without them publishes to the live
path; a projection worker refreshes its lag gauges every ``RAYSOURCE_PROJECTION_LAG_REFRESH_S``.
(``RAYSOURCE_COALESCE`` is the caller's: tests/runtime/test_coalesce_ray.py.)"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import ray

from raysource.examples.seats import SHOW, ReserveSeat
from raysource.runtime.actors.host_actor import HostActor, HostSpec, actor_options
from raysource.runtime.stores import StoreSpec

pytestmark = pytest.mark.ray


def _worker_log(pid: int) -> str:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "".join(f.read_text(errors="replace") for f in logs.glob(f"worker-*-{pid}.err"))


def _until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _retired_line(pid: int, name: str) -> str | None:
    for line in _worker_log(pid).splitlines():
        if f"{name} retired (handoff)" in line:
            return line
    return None


def test_live_readside_and_json_log_switches(ray_local) -> None:
    system = f"env{uuid.uuid4().hex[:6]}"
    switched = {"RAYSOURCE_LIVE_READSIDE": "0", "RAYSOURCE_LOG_JSON": "1"}
    hosts = {}
    for label, env in (("switched", switched), ("default", {})):
        spec = HostSpec(system, SHOW, StoreSpec(), placement="dedicated", entity_id=label)
        opts = actor_options(spec, runtime_env={"env_vars": env} if env else None)
        handle = HostActor.options(**opts).remote(spec)
        reply = ray.get(handle.ask.remote(ReserveSeat("A1", "ann"), label), timeout=120)
        assert reply is not None
        hosts[label] = (spec, handle, ray.get(handle.info.remote(), timeout=60))
    assert hosts["switched"][2]["live"] is None  # no publisher at all
    assert hosts["default"][2]["live"] == {"published": 0, "dropped": 0}
    spec, handle, info = hosts["switched"]
    handle.handoff.remote()  # retires: one INFO line, then exits (its reply may not come)
    _until(lambda: _retired_line(info["pid"], spec.actor_name), "the retired line")
    record = json.loads(_retired_line(info["pid"], spec.actor_name) or "")
    assert record["level"] == "INFO" and "retired (handoff)" in record["message"]
    ray.kill(hosts["default"][1])


@pytest.mark.cassandra
def test_projection_lag_refresh_switch(ray_local, cassandra_contact, cassandra_keyspace) -> None:
    """``RAYSOURCE_PROJECTION_LAG_REFRESH_S`` in a projection worker's environment sets how
    often it refreshes its lag gauges on its own: 0.2 s refreshes again and again, 0 runs no
    refresher at all, unset is every 30 s."""
    import asyncio

    from raysource.examples.reservations_view import reservations_projection
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.readside.worker_actor import ProjectionActor

    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)

    async def schema() -> None:
        await (await CassandraJournal.connect(config, create_schema=True)).close()

    asyncio.run(schema())
    workers = {}
    for label, env in (("fast", "0.2"), ("off", "0"), ("default", None)):
        spec = reservations_projection(f"lag-{label}-{uuid.uuid4().hex[:4]}")
        opts: dict = {"max_concurrency": 8}
        if env is not None:
            opts["runtime_env"] = {"env_vars": {"RAYSOURCE_PROJECTION_LAG_REFRESH_S": env}}
        handle = ProjectionActor.options(**opts).remote(spec, config, 0)
        ray.get(handle.global_prepare.remote(), timeout=120)
        ray.get(handle.start.remote(), timeout=120)
        workers[label] = handle
    try:
        fast = workers["fast"]
        _until(lambda: ray.get(fast.lag_refresh.remote())["refreshes"] >= 3, "three refreshes")
        assert ray.get(fast.lag_refresh.remote())["period_s"] == 0.2
        # "off" has no refresher task at all (a structural fact, no waiting for absence)
        assert ray.get(workers["off"].lag_refresh.remote()) == {
            "period_s": 0.0,
            "running": False,
            "refreshes": 0,
        }
        default = ray.get(workers["default"].lag_refresh.remote())
        assert default["period_s"] == 30.0 and default["running"] is True
    finally:
        for handle in workers.values():
            ray.get(handle.stop.remote(), timeout=60)
            ray.kill(handle)
