"""The demo's durable-timer part: seat holds that expire unless confirmed.

Before the load, :class:`HoldCheck` holds five seats on each of a few extra shows for
``hold_s`` seconds (``HoldSeat``: a ``SeatHeld`` event plus a durable timer) and confirms two
of them per show (``ConfirmHold``: the seat is reserved, the timer cancelled). During the load
the timer services fire the other holds' ``ReleaseHold``. After the load it checks, on the
live state of those shows, that every unconfirmed hold was released and every confirmed one is
a reservation, and prints the timer services' lateness figures.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from raysource.examples.seats import SHOW, ConfirmHold, HoldSeat
from raysource.journal.cassandra.config import CassandraConfig
from raysource.loadtest.driver import Say
from raysource.sharding.system import System

__all__ = ["HoldCheck"]

_SEATS = ("A1", "A2", "A3", "A4", "A5")
_CONFIRMED = ("A1", "A2")


@dataclass
class HoldCheck:
    """See the module docstring (a :class:`~raysource.loadtest.driver.LoadExtension`)."""

    shows: int = 4
    hold_s: float = 5.0
    release_timeout_s: float = 30.0
    ok: bool = False
    show_ids: list[str] = field(default_factory=list)
    held_at: float = 0.0
    released: int = 0
    confirmed: int = 0
    waited_s: float | None = None
    timers: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def before_load(self, system: System, config: CassandraConfig, workload: Any, say: Say) -> None:
        run = uuid.uuid4().hex[:6]
        self.show_ids = [f"holds-{run}-{i}" for i in range(self.shows)]
        self.held_at = time.monotonic()
        for sid in self.show_ids:
            show = system.entity(SHOW, sid)
            for seat in _SEATS:
                show.ask(HoldSeat(seat, f"holder-{seat}", self.hold_s), timeout=30.0)
            for seat in _CONFIRMED:
                show.ask(ConfirmHold(seat, f"holder-{seat}"), timeout=30.0)
        say(
            f"durable timers: {len(_SEATS) * self.shows} seats held for {self.hold_s:g} s on "
            f"{self.shows} shows, {len(_CONFIRMED) * self.shows} confirmed; the rest are "
            f"released by their timers"
        )

    def after_load(
        self,
        system: System,
        config: CassandraConfig,
        workload: Any,
        tallies: dict[str, dict[str, int]],
        say: Say,
    ) -> None:
        deadline = self.held_at + self.hold_s + self.release_timeout_s
        while True:
            states = [system.entity(SHOW, sid).state(timeout=30.0) for sid in self.show_ids]
            if all(not s.holds for s in states) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.waited_s = time.monotonic() - self.held_at
        for sid, state in zip(self.show_ids, states):
            want = {seat: f"holder-{seat}" for seat in _CONFIRMED}
            if state.holds:
                self.problems.append(f"{sid}: still held {sorted(state.holds)}")
            if state.reservations != want:
                self.problems.append(f"{sid}: reservations {state.reservations} != {want}")
            self.confirmed += len(set(state.reservations) & set(_CONFIRMED))
            self.released += len(
                [
                    s
                    for s in _SEATS
                    if s not in _CONFIRMED and s not in state.holds and s not in state.reservations
                ]
            )
        try:
            self.timers = system.timer_info()
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            self.problems.append(f"timer services did not answer: {exc!r}")
        self.ok = not self.problems and bool(self.show_ids)

    def close(self, say: Say) -> None:
        pass

    def lines(self) -> list[str]:
        if not self.show_ids:
            return ["durable-timer check not run"]
        fired = sum(t.get("fired", 0) for t in self.timers)
        p50 = max((t.get("lateness_ms", {}).get("p50") or 0 for t in self.timers), default=0)
        p99 = max((t.get("lateness_ms", {}).get("p99") or 0 for t in self.timers), default=0)
        out = [
            f"durable-timer check {'PASSED' if self.ok else 'FAILED'}: "
            f"{self.released} holds released by their timers, {self.confirmed} confirmed "
            f"(reserved), checked {self.waited_s or 0:.1f} s after holding; timer services "
            f"fired {fired}, lateness p50 {p50} ms, p99 {p99} ms"
        ]
        out += [f"  problem: {p}" for p in self.problems[:10]]
        return out
