"""Faults *below* the Cassandra journal, in cassandra-driver: the journal's own decisions run.

:class:`~raysource.testing.faults.FaultyJournal` wraps a journal and answers for it, so the
Cassandra journal's handling of an unconfirmed conditional append (its serial re-read: stored,
fenced or still unknown) never runs under it. :class:`DriverFaults` hooks the driver's
``ResponseFuture`` instead, for the journal's conditional batches (the fenced appends), counted
from 1 while installed:

==================  ========================================================================
``lost_response``   Cassandra executes the batch; its answer is replaced by a client timeout
                    (``OperationTimedOut``): the journal must find its rows with the re-read
``late``            the batch is answered by a client timeout at once and executed later (a
                    request queued on a slow node): by default right after the answer to
                    the journal's deciding serial re-read, the worst moment (the re-read
                    found nothing, and the batch lands just after); or ``land_s`` seconds
                    after the fault
==================  ========================================================================

A fault aims at ``target`` "conditional" (default: the per-append guard's conditional batches)
or "shared" (the epoch guard's host-wide batches carrying the event rows of several aggregates,
``raysource.journal.cassandra.shared_writes.SharedBatch``), counted per target. A shared
request has no deciding serial re-read: a ``late`` one without ``land_s`` lands at the next
serial read of anyone, else at :meth:`DriverFaults.wait_landed`; ``fired_parts`` lists how
many aggregates each fired shared request carried.

Each fired fault is in :attr:`DriverFaults.fired` (``"<kind>@batch#<n>"``, or
``"<kind>@shared#<n>"``);
:attr:`DriverFaults.serial_reads` counts the serial (LOCAL_SERIAL/SERIAL) reads sent after a
fault fired, i.e. the journal's deciding re-reads. ``await wait_landed()`` before checking a
history: every late batch has been executed. Patches the driver's class for the whole process
while installed (``with DriverFaults([...]):`` or ``install()``/``uninstall()``); one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.cluster import ResponseFuture
from cassandra.query import BatchStatement

from raysource.journal.cassandra.shared_writes import SharedBatch

__all__ = ["DRIVER_FAULT_KINDS", "DriverFault", "DriverFaults"]

DRIVER_FAULT_KINDS = ("lost_response", "late")
DRIVER_FAULT_TARGETS = ("conditional", "shared")
_SERIAL = (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL)


@dataclass(frozen=True)
class DriverFault:
    """``kind`` on the ``nth`` batch of ``target`` (1-based); ``land_s``: the delay of
    ``late`` (None: right after the next serial read is answered)."""

    kind: str
    nth: int = 1
    land_s: float | None = None
    target: str = "conditional"

    def __post_init__(self) -> None:
        if self.kind not in DRIVER_FAULT_KINDS:
            raise ValueError(f"unknown driver fault {self.kind!r} (known: {DRIVER_FAULT_KINDS})")
        if self.target not in DRIVER_FAULT_TARGETS:
            raise ValueError(f"unknown target {self.target!r} (known: {DRIVER_FAULT_TARGETS})")

    def __str__(self) -> str:
        return f"{self.kind}@{'batch' if self.target == 'conditional' else 'shared'}#{self.nth}"


def _target(query: Any) -> str | None:
    if isinstance(query, SharedBatch):
        return "shared"
    if isinstance(query, BatchStatement) and query.serial_consistency_level is not None:
        return "conditional"
    return None


class DriverFaults:
    """The driver-level faults of one run (see the module docstring); ``install`` patches
    cassandra-driver's ``ResponseFuture`` until ``uninstall`` (idempotent)."""

    _active: DriverFaults | None = None

    def __init__(self, faults: list[DriverFault] | tuple[DriverFault, ...]) -> None:
        self.faults = list(faults)
        self.fired: list[str] = []
        self.batches = 0  # conditional batches seen
        self.shared = 0  # shared (host-wide) batches seen
        self.fired_parts: list[int] = []  # aggregates carried by each fired shared batch
        self.serial_reads = 0  # serial reads sent after the first fault fired
        self._lock = threading.Lock()
        self._lose: set[int] = set()  # id() of response futures whose answer is lost
        self._landing: set[int] = set()  # id() of late re-executions (not counted)
        self._pending = 0
        self._after_read: list[Any] = []  # late landings waiting for the next serial read
        self._landed = threading.Condition(self._lock)
        self._saved: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ install

    def __enter__(self) -> DriverFaults:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self) -> None:
        if DriverFaults._active is not None:
            raise RuntimeError("another DriverFaults is installed")
        DriverFaults._active = self
        send, set_result = ResponseFuture.send_request, ResponseFuture._set_result
        self._saved = (send, set_result)
        hook = self

        def send_request(fut, error_no_hosts=True):  # noqa: ANN001, ANN202
            fault = hook._on_send(fut)
            if fault is None:
                return send(fut, error_no_hosts)
            if fault.kind == "late":
                hook._schedule_landing(fut.session, fut.query, fault.land_s)
                fut._set_final_exception(
                    OperationTimedOut({"injected": f"{fault}: answered before it ran"})
                )
                return True
            hook._lose.add(id(fut))  # lost_response: send it, lose the answer
            return send(fut, error_no_hosts)

        def _set_result(fut, host, connection, pool, response):  # noqa: ANN001, ANN202
            with hook._lock:
                lose = id(fut) in hook._lose
                hook._lose.discard(id(fut))
            if lose:
                if pool:
                    pool.return_connection(connection)
                fut._set_final_exception(
                    OperationTimedOut({str(host): "injected: executed, answer lost"})
                )
                return None
            return set_result(fut, host, connection, pool, response)

        ResponseFuture.send_request = send_request
        ResponseFuture._set_result = _set_result

    def uninstall(self) -> None:
        if self._saved is not None:
            ResponseFuture.send_request, ResponseFuture._set_result = self._saved
            self._saved = None
        if DriverFaults._active is self:
            DriverFaults._active = None

    # ------------------------------------------------------------------ hooks

    def _on_send(self, fut: Any) -> DriverFault | None:
        """The fault for this send, if one is due (a non-idempotent batch is never re-sent
        by the session's retry policy, so each send is a new append)."""
        query = fut.query
        waiting: list[Any] = []
        with self._lock:
            if id(query) in self._landing:
                return None
            if self.fired and getattr(fut.message, "consistency_level", None) in _SERIAL:
                self.serial_reads += 1
                waiting, self._after_read = self._after_read, []
        for land in waiting:  # lands as soon as the re-read has its answer
            fut.add_callbacks(lambda _r, land=land: land(), lambda _e, land=land: land())
        with self._lock:
            target = _target(query)
            if target is None:
                return None
            if target == "shared":
                self.shared += 1
                n = self.shared
            else:
                self.batches += 1
                n = self.batches
            for f in self.faults:
                if f.target == target and f.nth == n:
                    self.fired.append(str(f))
                    if target == "shared":
                        self.fired_parts.append(query.parts)
                    return f
        return None

    def _schedule_landing(self, session: Any, query: Any, delay: float | None) -> None:
        with self._lock:
            self._pending += 1
            self._landing.add(id(query))

        def done(_result: Any = None) -> None:
            with self._lock:
                self._landing.discard(id(query))
                self._pending -= 1
                self._landed.notify_all()

        def land() -> None:
            try:
                session.execute_async(query).add_callbacks(done, done)
            except Exception:  # noqa: BLE001 - the session closed: it never lands
                done()

        if delay is None:
            with self._lock:
                self._after_read.append(land)
            return
        timer = threading.Timer(delay, land)
        timer.daemon = True
        timer.start()

    async def wait_landed(self, timeout: float = 60.0) -> None:
        """Until every late batch has been executed (answered by Cassandra); one still waiting
        for a serial read (none came) lands now."""
        with self._lock:
            waiting, self._after_read = self._after_read, []
        for land in waiting:
            land()

        def wait() -> bool:
            with self._lock:
                return self._landed.wait_for(lambda: self._pending == 0, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"{self._pending} late batch(es) never ran")
