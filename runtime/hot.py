"""Hot aggregates: the busiest entities of a host, by commands per second and by queue wait.

Ray-free, and no work per command: the host's periodic sweep (``AggregateHost.sweep``) calls
:meth:`HotTracker.update` with its live cores, which reads each core's command counter
(``CoreStats.commands``, kept anyway) and mailbox depth (``EntityCore.queued``). Between two
sweeps an entity's rate is the counter's delta over the elapsed time; its queue wait is
estimated by Little's law, ``queued / rate`` (a command arriving now waits for those ahead of
it at the rate they are served); an entity with commands queued and none served since the last
sweep waits at least the whole interval.

The top ``k`` of each ranking go to the host's ``info()["hot"]`` (shown by ``raysource
status``) and to the gauges ``raysource_hot_aggregate_commands_per_second`` and
``raysource_hot_aggregate_queue_wait_seconds`` (labels ``type``, ``host``, ``entity``: at most
``k`` entities per host are ever non-zero at once; one that leaves the top is set to 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from raysource.runtime.metrics import Metrics

__all__ = ["HotAggregate", "HotTracker"]

RATE = "raysource_hot_aggregate_commands_per_second"
WAIT = "raysource_hot_aggregate_queue_wait_seconds"


class _Core(Protocol):
    @property
    def queued(self) -> int: ...

    @property
    def stats(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class HotAggregate:
    """One entity's figures over the last sweep interval."""

    entity_id: str
    commands_per_s: float
    queued: int
    queue_wait_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class HotTracker:
    """The top ``k`` entities of one host (see the module docstring)."""

    def __init__(self, k: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self.k = k
        self._clock = clock
        self._seen: dict[str, int] = {}  # entity -> command counter at the last update
        self._at: float | None = None
        self.by_rate: list[HotAggregate] = []
        self.by_wait: list[HotAggregate] = []
        self._shown: dict[str, set[str]] = {RATE: set(), WAIT: set()}

    def update(self, cores: Mapping[str, _Core]) -> None:
        now = self._clock()
        elapsed = None if self._at is None else max(now - self._at, 1e-9)
        figures = []
        seen: dict[str, int] = {}
        for eid, core in cores.items():
            commands = int(core.stats.commands)
            seen[eid] = commands
            before = self._seen.get(eid)
            if elapsed is None or before is None:
                continue
            rate = max(commands - before, 0) / elapsed
            queued = core.queued
            wait = queued / rate if rate > 0 else (elapsed if queued else 0.0)
            figures.append(HotAggregate(eid, rate, queued, wait))
        self._seen, self._at = seen, now
        self.by_rate = sorted(
            (f for f in figures if f.commands_per_s > 0), key=lambda f: -f.commands_per_s
        )[: self.k]
        self.by_wait = sorted(
            (f for f in figures if f.queue_wait_s > 0), key=lambda f: -f.queue_wait_s
        )[: self.k]

    def record(self, metrics: Metrics, type_name: str, host: str) -> None:
        """Set the gauges of the current top ``k`` (and 0 for entities that left it)."""
        for name, top, attr in (
            (RATE, self.by_rate, "commands_per_s"),
            (WAIT, self.by_wait, "queue_wait_s"),
        ):
            now = {f.entity_id for f in top}
            for eid in self._shown[name] - now:
                metrics.set(name, 0.0, type=type_name, host=host, entity=eid)
            for f in top:
                value = float(getattr(f, attr))
                metrics.set(name, value, type=type_name, host=host, entity=f.entity_id)
            self._shown[name] = now

    def info(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "by_commands_per_s": [f.as_dict() for f in self.by_rate],
            "by_queue_wait": [f.as_dict() for f in self.by_wait],
        }
