"""Hot aggregates (issue 28): a host's top entities by commands per second and by queue wait,
from its periodic sweep (no work per command), in ``info()["hot"]`` and as gauges; Ray-free."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from test_metrics import Clock, make_host
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import CreateShow, GetShow
from raysource.runtime.hot import HotTracker
from raysource.runtime.metrics import Metrics


def test_the_busiest_entity_leads_and_one_that_cools_down_leaves_the_top() -> None:
    async def main():
        clock = Clock()
        host = make_host(clock=clock)
        await host.ask("busy", CreateShow(10))
        await host.ask("calm", CreateShow(10))
        await host.sweep()  # the baseline
        for _ in range(30):
            await host.ask("busy", GetShow())
        for _ in range(3):
            await host.ask("calm", GetShow())
        clock.t += 10.0
        await host.sweep()
        hot = host.info()["hot"]["by_commands_per_s"]
        assert [(h["entity_id"], h["commands_per_s"]) for h in hot] == [
            ("busy", 3.0),
            ("calm", 0.3),
        ]
        rate = "raysource_hot_aggregate_commands_per_second"
        assert host.metrics.value(rate, entity="busy") == 3.0
        clock.t += 10.0  # nothing for "busy" any more: it leaves the top, its gauge is 0
        await host.ask("calm", GetShow())
        await host.sweep()
        assert [h["entity_id"] for h in host.info()["hot"]["by_commands_per_s"]] == ["calm"]
        assert host.metrics.value(rate, entity="busy") == 0.0
        await host.close()

    asyncio.run(main())


def test_queue_wait_is_queued_over_the_rate_and_a_stuck_entity_waits_the_interval() -> None:
    t = [0.0]
    tracker = HotTracker(k=2, clock=lambda: t[0])

    def core(commands: int, queued: int):
        return SimpleNamespace(stats=SimpleNamespace(commands=commands), queued=queued)

    tracker.update({"a": core(0, 0), "b": core(0, 0), "c": core(0, 0)})
    t[0] = 2.0
    tracker.update({"a": core(100, 50), "b": core(10, 1), "c": core(0, 7)})
    waits = [(h.entity_id, h.queue_wait_s) for h in tracker.by_wait]
    assert waits == [("c", 2.0), ("a", 1.0)]  # k=2: "b" (0.2 s) is not shown
    m = Metrics()
    tracker.record(m, "show", "h1")
    assert m.value("raysource_hot_aggregate_queue_wait_seconds", entity="a") == 1.0
