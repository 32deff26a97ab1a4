"""``run_demo`` end to end on the session's Ray and Cassandra (a short load): the summary, the
consistency check and the read side — the reservations-by-customer projection catches up (lag
0) and the view equals the live state for the sampled customers — the seat holds (released by
their durable timers unless confirmed), and the projection is stopped afterwards."""

from __future__ import annotations

import time

import pytest

from raysource.loadtest.demo import run_demo

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]


@pytest.mark.timeout(90)
def test_demo_shows_the_read_side(ray_local, cassandra_contact, cassandra_keyspace, tmp_path):
    host, port = cassandra_contact
    lines: list[str] = []
    result = run_demo(
        seconds=4,
        contact=f"{host}:{port}",
        keyspace=cassandra_keyspace,
        results_dir=str(tmp_path),
        say=lines.append,
    )
    text = "\n".join(lines)
    assert result.exit_code == 0, text
    assert result.read_side_ok, text
    rs = result.read_side
    assert rs.caught_up and rs.final_lag == 0
    assert rs.sampled and rs.matched == len(rs.sampled) and rs.reservations > 0
    assert "consistency check PASSED" in text
    assert "read-side check PASSED" in text
    assert "final lag 0 events" in text
    holds = result.holds  # durable timers: unconfirmed holds released, confirmed reserved
    assert holds is not None and holds.ok, text
    assert holds.released == 3 * holds.shows and holds.confirmed == 2 * holds.shows
    assert "durable-timer check PASSED" in text
    deadline = time.monotonic() + 10  # ray.kill is asynchronous
    while True:
        left = [
            a["name"]
            for a in ray_local.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"raysource-projection:{rs.projection}:")
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == []
