"""Metrics and structured logs of the runtime, on the in-memory journal (no Ray)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, GetShow, ReserveSeat, seat_label
from raysource.journal.errors import ConcurrentWriteError
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import AggregateStoppedError, CommandRejected, PersistFailedError
from raysource.runtime.host import AggregateHost
from raysource.runtime.logs import JsonFormatter, configure_json_logging
from raysource.runtime.metrics import METRICS, Metrics, error_kind
from raysource.snapshots.memory import InMemorySnapshotStore

CMD = "raysource_commands_total"


def _ser() -> Serialization:
    ser = Serialization()
    SHOW.register_types(ser)
    return ser


def make_host(journal: InMemoryJournal | None = None, **kw) -> AggregateHost:
    kw.setdefault("sweep_interval_s", 3600)
    return AggregateHost(SHOW, journal or InMemoryJournal(), InMemorySnapshotStore(), _ser(), **kw)


def make_core(journal: InMemoryJournal, metrics: Metrics, writer: str = "w1") -> EntityCore:
    return EntityCore(
        SHOW, "s", journal, InMemorySnapshotStore(), _ser(), writer_id=writer, metrics=metrics
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- the recorder


def test_recorder_counts_sums_and_rejects_undeclared_labels():
    m = Metrics()
    m.command("show", "accepted")
    m.command("show", "accepted", 2)
    m.command("show", "rejected")
    m.journal_write("show", events=3, seconds=0.004)
    m.journal_write("show", events=1, seconds=20.0)  # beyond the last bucket: +Inf
    assert m.value(CMD, type="show", outcome="accepted") == 3
    assert m.value(CMD, type="show") == 4  # labels not given are summed over
    h = m.histogram("raysource_persist_latency_seconds", type="show")
    assert (h.count, h.sum) == (2, pytest.approx(20.004))
    assert h.buckets[-1] == 1 and sum(h.buckets) == 2
    assert m.value("raysource_events_persisted_total") == 4
    m.inc(CMD, 1, type="show")  # missing label: logged, never raised, not recorded
    m.inc("no_such_metric", 1)
    assert m.value(CMD) == 4
    snap = m.snapshot()
    assert snap[CMD]["type=show,outcome=accepted"] == 3
    assert snap["raysource_persist_latency_seconds"]["type=show"]["count"] == 2
    assert all(name.startswith("raysource_") for name in METRICS)


def test_error_kinds():
    from raysource.journal.errors import (
        ConcurrentWriteError,
        JournalUnavailableError,
        UnserializableError,
    )

    assert error_kind(ConcurrentWriteError("show|s", 2)) == "fenced"
    assert error_kind(JournalUnavailableError("x")) == "unavailable"
    assert error_kind(TimeoutError()) == "unavailable"
    assert error_kind(UnserializableError("x")) == "serialization"
    assert error_kind(ValueError()) == "other"


# --------------------------------------------------------------------------- the runtime


async def test_host_records_outcomes_group_commit_recovery_and_passivations():
    clock = Clock()
    journal = InMemoryJournal(latency=0.02)
    host = make_host(journal, clock=clock, idle_timeout_s=10, metrics_host="h1")
    m = host.metrics
    await host.ask("s", ReserveSeat("A1", "alice"))  # activates: one recovery
    results = await asyncio.gather(
        *(host.ask("s", ReserveSeat(seat_label(10 + i), f"c{i}")) for i in range(20)),
        host.ask("s", ReserveSeat("A1", "bob")),  # rejected
        host.ask("s", GetShow()),
        return_exceptions=True,
    )
    assert sum(isinstance(r, CommandRejected) for r in results) == 1
    assert m.value(CMD, type="show", outcome="accepted") == 22
    assert m.value(CMD, type="show", outcome="rejected") == 1
    assert m.value("raysource_events_persisted_total", type="show") == 21
    writes = m.value("raysource_journal_writes_total", type="show")
    assert writes == journal.write_count and writes < 21  # group commit
    assert m.histogram("raysource_persist_latency_seconds", type="show").count == writes
    assert m.histogram("raysource_persist_latency_seconds").sum >= 0.02 * writes
    assert m.histogram("raysource_recovery_seconds", type="show").count == 1
    assert m.value("raysource_active_aggregates", type="show", host="h1") == 1

    clock.t += 11
    assert await host.sweep() == 1
    assert m.value("raysource_passivations_total", type="show", reason="idle") == 1
    assert m.value("raysource_active_aggregates", type="show", host="h1") == 0
    await host.ask("s", GetShow())  # reactivates: a second recovery (a restart)
    assert m.histogram("raysource_recovery_seconds", type="show").count == 2
    await host.passivate("s")
    assert m.value("raysource_passivations_total", reason="passivated") == 1
    assert host.info()["metrics"][CMD]["type=show,outcome=accepted"] == 23
    await host.close()


async def test_failed_write_counts_an_error_per_command_and_a_journal_error():
    journal = InMemoryJournal()
    m = Metrics()
    core = make_core(journal, m)
    await core.handle(ReserveSeat("A1", "alice"))
    journal.fail_next_appends(1)
    with pytest.raises(PersistFailedError):
        await core.handle(ReserveSeat("A2", "bob"))
    assert m.value(CMD, outcome="error") == 1 and m.value(CMD, outcome="accepted") == 1
    assert m.value("raysource_journal_errors_total", type="show", kind="unavailable") == 1
    assert m.value("raysource_journal_writes_total") == 1  # only successful writes count
    # the rebuild after the failed write is a recovery too
    assert m.histogram("raysource_recovery_seconds").count == 2
    await core.stop()


async def test_fencing_counts_a_fenced_journal_error_and_a_fenced_deactivation():
    journal = InMemoryJournal()
    host = make_host(journal)
    await host.ask("s", ReserveSeat("A1", "alice"))
    other = make_core(journal, Metrics(), writer="other")  # a second writer takes #2
    await other.handle(ReserveSeat("A2", "bob"))
    # the write conflict stops the activation; the caller is told it stopped (not applied)
    with pytest.raises(AggregateStoppedError) as stopped:
        await host.ask("s", ReserveSeat("A3", "carol"))
    assert isinstance(stopped.value.__cause__, ConcurrentWriteError)
    m = host.metrics
    assert m.value("raysource_journal_errors_total", type="show", kind="fenced") == 1
    assert m.value(CMD, outcome="error") == 1
    await host.ask("s", ReserveSeat("A3", "carol"))  # a fresh activation recovers the truth
    assert m.value("raysource_passivations_total", reason="fenced") == 1
    await other.stop()
    await host.close()


async def test_snapshot_failure_is_a_journal_error_not_a_failed_command():
    journal, snaps = InMemoryJournal(), InMemorySnapshotStore()
    m = Metrics()
    import dataclasses

    from raysource.runtime.aggregate import SnapshotPolicy

    agg = dataclasses.replace(SHOW, snapshot=SnapshotPolicy(every_n_events=1))
    core = EntityCore(agg, "s", journal, snaps, _ser(), writer_id="w", metrics=m)
    snaps.fail_next_saves(1)
    await core.handle(ReserveSeat("A1", "alice"))
    assert m.value("raysource_journal_errors_total", kind="snapshot") == 1
    assert m.value(CMD, outcome="accepted") == 1
    await core.stop()


# --------------------------------------------------------------------------- logs


def test_json_formatter_carries_persistence_id_and_sequence_nr():
    record = logging.LogRecord(
        "raysource.runtime.core",
        logging.WARNING,
        __file__,
        1,
        "%s: write failed",
        ("show|s",),
        None,
    )
    record.persistence_id, record.sequence_nr, record.writer_id = "show|s", 7, "w1"
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "show|s: write failed"
    assert (out["persistence_id"], out["sequence_nr"], out["writer_id"]) == ("show|s", 7, "w1")
    assert out["level"] == "WARNING" and out["logger"] == "raysource.runtime.core" and "ts" in out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_runtime_logs_carry_context_at_recovery_failure_and_passivation():
    capture = _Capture()
    runtime_log = logging.getLogger("raysource.runtime")
    old_level = runtime_log.level
    runtime_log.addHandler(capture)
    runtime_log.setLevel(logging.DEBUG)
    try:
        journal = InMemoryJournal()
        host = make_host(journal)
        await host.ask("s", ReserveSeat("A1", "alice"))
        journal.fail_next_appends(1)
        with pytest.raises(PersistFailedError):
            await host.ask("s", ReserveSeat("A2", "bob"))
        await host.passivate("s")
        await host.close()
    finally:
        runtime_log.removeHandler(capture)
        runtime_log.setLevel(old_level)
    by_msg = {r.getMessage(): r for r in capture.records}
    recovered = next(r for m, r in by_msg.items() if "recovered at #0" in m)
    assert (recovered.persistence_id, recovered.sequence_nr) == ("show|s", 0)
    failed = next(r for m, r in by_msg.items() if "write of 1 events from #2 failed" in m)
    assert (failed.persistence_id, failed.sequence_nr, failed.type) == ("show|s", 2, "show")
    assert failed.writer_id.endswith("-1")
    passivated = next(r for m, r in by_msg.items() if "deactivated (passivated) at #1" in m)
    assert (passivated.reason, passivated.sequence_nr) == ("passivated", 1)
    line = json.loads(JsonFormatter().format(failed))
    assert line["persistence_id"] == "show|s" and line["sequence_nr"] == 2


def test_configure_json_logging_is_idempotent():
    logger = "raysource-test-json"
    configure_json_logging("DEBUG", logger)
    configure_json_logging("DEBUG", logger)
    handlers = logging.getLogger(logger).handlers
    assert len(handlers) == 1 and isinstance(handlers[0].formatter, JsonFormatter)
    logging.getLogger(logger).removeHandler(handlers[0])
