"""One flush of the running entity core (:class:`raysource.runtime.core.EntityCore`): what it
records while its commands are decided (:class:`Flush`, one :class:`Outcome` per command) and
the core's counters (:class:`CoreStats`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from raysource.journal.api import StoredEvent
from raysource.runtime import tracing
from raysource.runtime.timers import Pending, TimerFire

__all__ = ["CoreStats", "Flush", "Outcome"]


@dataclass(slots=True)
class CoreStats:
    """Counters of one activation (mutable, read them any time)."""

    commands: int = 0
    flushes: int = 0
    writes: int = 0
    events: int = 0
    rejections: int = 0
    failed_commands: int = 0
    failed_writes: int = 0
    snapshots: int = 0
    snapshot_failures: int = 0
    recoveries: int = 0
    repeats: int = 0  # commands answered from the idempotency key table (nothing run)
    timers_fired: int = 0  # timer fires that ran their command
    stale_fires: int = 0  # fires of timers no longer pending (cancelled, replaced, fired)


@dataclass(slots=True)
class Outcome:
    """The pending result of one command within a flush."""

    future: asyncio.Future[Any]
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Flush:
    """The commands of one flush and everything they decided, until the append is answered."""

    timestamp: datetime  # one timestamp for every event of the flush: one identifiable group
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    side_effects: list[tuple[Callable[[Any], Any], Any]] = field(default_factory=list)
    snapshot_due: bool = False
    bytes: int = 0
    # idempotency key -> (the first command's outcome, its first event if it persisted)
    keyed: dict[str, tuple[Outcome, StoredEvent | None]] = field(default_factory=dict)
    # durable timers: the flush's tentative changes, and fires that wrote no event
    timers: dict[str, Pending | None] = field(default_factory=dict)
    silent_fires: list[TimerFire] = field(default_factory=list)
    # fires of ids beyond this activation's sequence number (it may have missed events)
    behind: list[Outcome] = field(default_factory=list)
    # fires answered from this activation's own view, with no write of theirs (stale,
    # undecodable, beyond it, or consumed without events): a fence check comes first
    unwritten_fires: list[Outcome] = field(default_factory=list)
    stale_fires: int = 0
    trace: tracing.FlushTrace | None = None  # its spans, when tracing is on
