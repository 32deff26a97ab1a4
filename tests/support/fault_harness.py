"""A fault-schedule runner shared by the property tests (in-memory and Cassandra journals).

One schedule: a few entities of a ledger-like aggregate (every event names its command), two
hosts (two activations of one entity may be live at once), a fresh interloper host for each
second writer that an ``interleave`` fault injects, three callers that send ``Append`` commands to a
host each and re-send a command reported not applied (as ``EntityRef`` does), plus random
passivations and host crashes (every core of the host cancelled mid-flight; its callers hear
``HostCrashedError``). A caller without an answer once its :class:`Patience` is spent (loop
turns *and* seconds) is a ``hang`` violation. Every outcome goes into a :class:`History`; at the
end the live activations' states, a fresh recovery per entity and the journal are checked with
:func:`check_history`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raysource.errors import HostCrashedError
from raysource.examples.ledger import LEDGER, Append, Appended
from raysource.journal.api import Journal
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.aggregate import SnapshotPolicy
from raysource.runtime.core import EntityCore
from raysource.runtime.host import AggregateHost
from raysource.runtime.idempotency import Keyed
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.api import SnapshotStore
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing import faults as fk
from raysource.testing.history import History, LiveState, Violation, check_history, classify

# the example ledger with frequent snapshots, so recovery from snapshots is under fault too
LEDGER_T = dataclasses.replace(LEDGER, snapshot=SnapshotPolicy(every_n_events=3, keep=2))
SER = serialization_for(LEDGER_T, StoreSpec())
ENTITIES = ("e1", "e2")
RETRIES = 3
# Every answer must be in a category (a failed activation is RecoveryFailedError, not applied);
# RAYSOURCE_FAULTS_STRICT=0 counts uncategorized errors as "unknown" instead of failing.
CATEGORIZED = os.environ.get("RAYSOURCE_FAULTS_STRICT", "1") == "1"

# where each fault kind can fire
POINTS: dict[str, tuple[str, ...]] = {
    "fail": ("append", "replay", "highest", "repair_tags", "snapshot.load", "snapshot.save"),
    "lose_response": ("append", "replay", "snapshot.save"),
    "duplicate": ("append",),
    "delay": ("append", "replay", "highest", "snapshot.load", "snapshot.save"),
    "stall": ("append", "replay", "highest", "snapshot.load"),
    "timeout": ("append",),
    "tag_crash": ("append",),
    "interleave": ("append", "replay", "highest", "repair_tags", "snapshot.load", "snapshot.save"),
}


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    point: str
    nth: int
    after: bool = False
    variant: int = 0  # timeout: 1 lands at the gate; tag_crash: 1 hangs until the gate

    def __str__(self) -> str:
        return (
            f"{self.kind}@{self.point}#{self.nth}{' after' if self.after else ''}"
            f"{f' v{self.variant}' if self.variant else ''}"
        )


@dataclass(frozen=True)
class Schedule:
    """Commands: (caller, host, entity, amount) in each caller's send order; ``faults``;
    ``crashes``/``passivations``: (loop turns to wait, host, entity) events; ``release``:
    loop turns before the stall/landing gate opens."""

    commands: tuple[tuple[int, int, str, int], ...]
    faults: tuple[FaultSpec, ...]
    crashes: tuple[tuple[int, int], ...] = ()
    passivations: tuple[tuple[int, int, str], ...] = ()
    release: int = 20


@dataclass
class Run:
    persistence_ids: list[str]
    history: History = field(default_factory=History)
    violations: list[Violation] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    writes: int = 0


async def _turns(n: int, turn_s: float = 0.0) -> None:
    """Wait ``n`` event-loop turns (in-memory: every step is a few turns), or ``n * turn_s``
    seconds (a real store: every step is milliseconds)."""
    if turn_s:
        await asyncio.sleep(n * turn_s)
        return
    for _ in range(n):
        await asyncio.sleep(0)


class LoopClock:
    """Counts event-loop turns while the schedule runs: a ticker yields once per turn (in-memory),
    or sleeps ``turn_s`` per turn (a real store), so a starved process counts few turns."""

    def __init__(self, turn_s: float = 0.0) -> None:
        self.turn_s = turn_s
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.turn_s)
            self.turns += 1


@dataclass(frozen=True)
class Patience:
    """A caller's budget, spent only when both its loop turns and its seconds are spent.

    The turns make it immune to a loaded machine (a process that gets little CPU makes few
    turns, so slowness is never taken for a hang); the seconds keep a hang found quickly by a
    fast loop from being declared before a real store could have answered."""

    seconds: float
    turns: int

    def start(self, clock: LoopClock) -> Callable[[], bool]:
        t0, n0 = time.monotonic(), clock.turns
        return lambda: clock.turns - n0 > self.turns and time.monotonic() - t0 > self.seconds


class Harness:
    def __init__(
        self,
        schedule: Schedule,
        journal: Journal,
        snapshots: SnapshotStore,
        *,
        call_timeout: float = 5.0,
        call_turns: int | None = None,
        tag: str = "",
        turn_s: float = 0.0,
        check_tags: bool = True,
        keyed: bool = False,
        driver: Any = None,
    ) -> None:
        self.schedule = schedule
        self.gate = asyncio.Event()
        self.history = History()
        self.tag = tag or uuid.uuid4().hex[:6]
        self.entities = tuple(f"{e}{self.tag}" for e in ENTITIES)
        self.inner_journal = journal
        self.journal = fk.FaultyJournal(journal)
        self.snapshots = fk.FaultySnapshotStore(snapshots)
        self.call_timeout = call_timeout
        # in-memory a step is a few turns; against a real store a turn is ``turn_s`` seconds
        turns = call_turns or (int(call_timeout / turn_s) if turn_s else 20_000)
        self.patience = Patience(call_timeout, turns)
        self.clock = LoopClock(turn_s)
        self.turn_s = turn_s
        self.check_tags = check_tags
        self.keyed = keyed  # callers send Keyed commands and re-send unknown outcomes too
        # raysource.testing.driver_faults.DriverFaults: faults below a Cassandra journal,
        # installed for the schedule, removed before the checks
        self.driver = driver
        self.hosts = [self._host(f"h{i}") for i in range(2)]
        self.interlopers: list[AggregateHost] = []
        self.inflight: list[set[asyncio.Task]] = [set(), set()]
        self.n_interleaves = 0
        self.hangs: list[str] = []
        for f in schedule.faults:
            self._arm(f)

    def _host(self, prefix: str) -> AggregateHost:
        return AggregateHost(
            LEDGER_T,
            self.journal,
            self.snapshots,
            SER,
            writer_prefix=f"{prefix}-{uuid.uuid4().hex[:4]}",
            max_batch=8,
        )

    def _arm(self, spec: FaultSpec) -> None:
        kw: dict[str, Any] = {"nth": spec.nth}
        k = spec.kind
        if k == "delay":
            f = fk.delay(0, spec.point, **kw)
        elif k == "stall":
            f = fk.stall(self.gate, spec.point, after=spec.after, **kw)
        elif k == "timeout":
            f = fk.timeout(spec.point, land=self.gate if spec.variant else None, **kw)
        elif k == "interleave":
            f = fk.interleave(self._second_writer, spec.point, after=spec.after, **kw)
        elif k == "tag_crash":  # variant 1: the writer hangs after the batch (dies, if crashed)
            f = fk.tag_crash(spec.point, gate=self.gate if spec.variant else None, **kw)
        else:
            f = getattr(fk, k)(spec.point, **kw)
        (self.snapshots if spec.point.startswith("snapshot.") else self.journal).add(f)

    async def _second_writer(self) -> None:
        """Another activation appends to the entity that is mid-recovery / mid-flush. Each
        second writer is a host of its own (another process): it never waits for the
        activation it interrupts, as a second writer of the real system cannot."""
        self.n_interleaves += 1
        i = self.n_interleaves
        interloper = self._host(f"int{i}")
        self.interlopers.append(interloper)
        for n, eid in enumerate(self.entities):
            cmd = f"{self.tag}:int{i}-{n}"
            call = interloper.ask(eid, Append(cmd, 100))
            await self.history.ask(cmd, self._bounded(cmd, call), caller="interloper")

    async def _ask(self, host_idx: int, eid: str, cmd: str, amount: int, caller: str) -> str:
        host = self.hosts[host_idx]
        command: Any = Keyed(Append(cmd, amount), cmd) if self.keyed else Append(cmd, amount)
        task = asyncio.ensure_future(host.ask(eid, command))
        self.inflight[host_idx].add(task)

        async def crashed_is_unknown() -> Any:
            try:
                return await task
            except asyncio.CancelledError:
                if task.cancelled():  # the host was killed under it
                    raise HostCrashedError(f"host {host_idx} crashed") from None
                raise
            finally:
                self.inflight[host_idx].discard(task)

        obs = await self.history.ask(cmd, self._bounded(cmd, crashed_is_unknown()), caller=caller)
        return obs.outcome

    async def _bounded(self, cmd: str, call: Any) -> Any:
        """A caller never waits forever: no answer once its patience is spent is a hang (the
        attempt counts as unknown, and the hang is a violation of its own)."""
        task = asyncio.ensure_future(call)
        spent = self.patience.start(self.clock)
        while not task.done():
            await asyncio.wait({task}, timeout=0.05)
            if not task.done() and spent():
                task.cancel()
                await asyncio.wait({task})
                self.hangs.append(cmd)
                raise TimeoutError(f"{cmd}: no answer, patience {self.patience} spent")
        return task.result()

    async def _caller(self, idx: int) -> None:
        for n, (c, h, e, amount) in enumerate(self.schedule.commands):
            if c != idx:
                continue
            cmd = f"{self.tag}:c{idx}-{n}"
            # re-send what was not applied (like EntityRef); under a key, unknown outcomes too
            again = ("not_applied", "unknown", "uncategorized") if self.keyed else ("not_applied",)
            for _ in range(RETRIES):
                if (
                    await self._ask(
                        h, self.entities[ENTITIES.index(e)], cmd, amount, f"caller{idx}"
                    )
                    not in again
                ):
                    break

    async def _crash(self, turns: int, host_idx: int) -> None:
        await _turns(turns, self.turn_s)
        host = self.hosts[host_idx]
        self.hosts[host_idx] = self._host(f"h{host_idx}r")
        # the process dies: every activation stops mid-step, every call in flight is lost
        for core in list(host._cores.values()):
            if core._task is not None:
                core._task.cancel()
        for t in list(self.inflight[host_idx]):
            t.cancel()
        if host._sweeper is not None:
            host._sweeper.cancel()

    async def _passivate(self, turns: int, host_idx: int, eid: str) -> None:
        await _turns(turns, self.turn_s)
        await self.hosts[host_idx].passivate(self.entities[ENTITIES.index(eid)])

    async def _release(self) -> None:
        await _turns(self.schedule.release, self.turn_s)
        self.gate.set()

    async def run(self) -> Run:
        s = self.schedule
        if self.driver is not None:
            self.driver.install()
        self.clock.start()
        try:
            return await self._run(s)
        finally:
            self.clock.stop()
            if self.driver is not None:
                self.driver.uninstall()

    async def _run(self, s: Schedule) -> Run:
        tasks = [asyncio.ensure_future(self._caller(i)) for i in range(3)]
        side = [asyncio.ensure_future(self._release())]
        side += [asyncio.ensure_future(self._crash(t, h)) for t, h in s.crashes]
        side += [asyncio.ensure_future(self._passivate(t, h, e)) for t, h, e in s.passivations]
        await asyncio.gather(*tasks, *side)
        self.gate.set()
        await _turns(5, self.turn_s)  # late landings
        if self.driver is not None:
            await self.driver.wait_landed()  # every late batch ran: the journal is final
            self.driver.uninstall()
        self.journal.faults_enabled = False
        self.snapshots.faults_enabled = False
        live = []
        for host in self.hosts + self.interlopers:
            for core in host._cores.values():
                if not core.stopped:
                    live.append(
                        LiveState(core.persistence_id, core.sequence_nr, core.state, core.writer_id)
                    )
        for host in self.hosts + self.interlopers:
            await asyncio.wait_for(host.close(), 10)
        for eid in self.entities:
            # the next activation (faults off): its recovery (snapshots included) must equal
            # the fold, and it repairs the tag rows of the newest group, as in production
            core = EntityCore(
                LEDGER_T, eid, self.journal, self.snapshots, SER, writer_id="fresh-recovery"
            )
            await core.start()
            live.append(
                LiveState(core.persistence_id, core.sequence_nr, core.state, core.writer_id)
            )
            await core.stop()
        violations = await check_history(
            self.history,
            self.journal,
            aggregate_type=LEDGER_T,
            serialization=SER,
            persistence_ids=[LEDGER_T.persistence_id(e) for e in self.entities],
            command_of=lambda ev: ev.op_id if isinstance(ev, Appended) else None,
            live=live,
            writes=self.journal.writes,
            expected_reply=lambda _cmd, state: state.balance,
            categorized=CATEGORIZED,
            tags=self.check_tags,
        )
        violations += [
            Violation("hang", f"{cmd}: no answer, {self.patience} spent", command_id=cmd)
            for cmd in self.hangs
        ]
        return Run(
            [LEDGER_T.persistence_id(e) for e in self.entities],
            self.history,
            violations,
            [f.fault for f in self.journal.fired]
            + [f.fault for f in self.snapshots.fired]
            + (list(self.driver.fired) if self.driver is not None else []),
            len(self.journal.writes),
        )


async def run_schedule(
    schedule: Schedule,
    journal: Journal | None = None,
    snapshots: SnapshotStore | None = None,
    **kw: Any,
) -> Run:
    h = Harness(schedule, journal or InMemoryJournal(), snapshots or InMemorySnapshotStore(), **kw)
    return await h.run()


__all__ = [
    "ENTITIES",
    "POINTS",
    "FaultSpec",
    "Harness",
    "LEDGER_T",
    "LoopClock",
    "Patience",
    "Run",
    "SER",
    "Schedule",
    "classify",
    "run_schedule",
]
