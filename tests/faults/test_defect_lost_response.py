"""Issue 10, defect 1: a lost response must not turn one command into two applied commands.

The conditional batch of a flush is applied, its response is lost (the connection closes, the
coordinator restarts), and something sends the same statement again: the driver's default
retry policy (to the next host, no idempotence check), or any layer that re-delivers. The second
execution comes back "not applied" with the writer's *own* rows. Before the fix the journal
called that a concurrent writer, the core answered "not applied" (``AggregateStoppedError``),
and a caller following the retry rule (re-send what was not applied) stored the command twice:
``op-2`` at #2 and #3, balance 25 instead of 15.

Faults are injected in the driver itself (real Cassandra, real driver code paths): the result
message of the first conditional batch is replaced by a ``ConnectionShutdown`` before the driver
handles it, or the driver is made to send the same request again and only the second answer is
delivered. The query plan lists the node twice (two coordinators in front of the same replica),
so the driver has a "next host" to re-send to.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ResponseFuture
from cassandra.connection import ConnectionShutdown
from cassandra.protocol import ResultMessage
from cassandra.query import BatchStatement

from raysource.examples.ledger import LEDGER, Append, Appended
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import ConcurrentWriteError, NotAppliedError, OutcomeUnknownError
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.core import EntityCore
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra

SER = serialization_for(LEDGER, StoreSpec())


@pytest.fixture
async def config(cassandra_contact, cassandra_keyspace):
    # The per-append guard's conditional batch (the epoch guard's plain batch is idempotent:
    # its rows carry the epoch in the key, re-sending them is harmless).
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=0.4,
        guard="per-append",
    )
    journal = await CassandraJournal.connect(cfg, create_schema=True)
    await journal.close()
    return cfg


class LostResponse:
    """Driver hook: the next conditional batch (a journal append) is executed by Cassandra,
    then its result never reaches the caller. ``mode="drop"``: the driver sees the connection
    close instead (and applies its retry policy); ``mode="resend"``: the driver sends the same
    request again and delivers only the second answer."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.armed = False
        self.fired = 0
        self.seen_after = 0  # conditional-batch results delivered after the fault

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ResponseFuture._set_result
        hook = self

        def _set_result(fut, host, connection, pool, response):  # noqa: ANN001
            query = fut.query
            conditional = (
                isinstance(query, BatchStatement) and query.serial_consistency_level is not None
            )
            if conditional and isinstance(response, ResultMessage):
                if hook.armed:
                    hook.armed = False
                    hook.fired += 1
                    if hook.mode == "resend":
                        fut._retry(True, None, host)  # the same request, sent again
                        return None
                    response = ConnectionShutdown(
                        f"Connection to {host} was closed (injected: the batch was applied, "
                        "its response lost)"
                    )
                elif hook.fired:
                    hook.seen_after += 1
            return original(fut, host, connection, pool, response)

        monkeypatch.setattr(ResponseFuture, "_set_result", _set_result)


def two_coordinators(journal: CassandraJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every query plan lists the node twice: a second coordinator for the same replica."""
    cluster = journal.session.driver_session.cluster
    lbp = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy
    plan = lbp.make_query_plan
    monkeypatch.setattr(lbp, "make_query_plan", lambda *a, **kw: list(plan(*a, **kw)) * 2)


async def ask_like_a_reference(make_core, core: EntityCore, command) -> tuple[str, object]:
    """The documented retry rule of a caller: re-send what was not applied (to a fresh
    activation), never what may have been applied. Returns (what the caller saw, value)."""
    for _attempt in range(3):
        try:
            return "reply", await core.handle(command)
        except NotAppliedError:
            await core.stop()
            core = make_core()
        except OutcomeUnknownError as exc:
            return "unknown", exc
    return "gave up", None


async def stored_ops(cfg: CassandraConfig, pid: str) -> list[str]:
    journal = await CassandraJournal.connect(cfg)
    try:
        return [
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            async for e in journal.replay(pid)
        ]
    finally:
        await journal.close()


@pytest.mark.parametrize("mode", ["drop", "resend"])
async def test_a_lost_response_never_applies_a_command_twice(config, monkeypatch, mode) -> None:
    eid = f"lost-{mode}-{uuid.uuid4().hex[:6]}"
    journal = await CassandraJournal.connect(config)
    two_coordinators(journal, monkeypatch)
    hook = LostResponse(mode)
    hook.install(monkeypatch)

    def make_core() -> EntityCore:
        return EntityCore(
            LEDGER, eid, journal, InMemorySnapshotStore(), SER, writer_id=uuid.uuid4().hex[:12]
        )

    try:
        core = make_core()
        assert await core.handle(Append("op-1", 5)) == 5
        hook.armed = True
        seen, value = await ask_like_a_reference(make_core, core, Append("op-2", 10))
        assert hook.fired == 1
        ops = await stored_ops(config, LEDGER.persistence_id(eid))
    finally:
        await journal.close()
    # stored exactly once, whatever the caller saw
    assert ops == ["op-1", "op-2"], f"caller saw {seen}: {value!r}; journal holds {ops}"
    # and the caller saw the reply, or "outcome unknown": never "not applied"
    assert seen == "reply" and value == 15 or seen == "unknown", (seen, value)


async def test_re_appending_the_stored_group_is_a_success_but_a_rival_is_fenced(config) -> None:
    """The journal rule behind the fix, on both journals: a refused append whose stored rows
    are exactly this group (same writer, numbers, payloads) was applied before; any
    difference is a rival writer and is fenced."""
    cassandra = await CassandraJournal.connect(config)
    try:
        for journal in (InMemoryJournal(), cassandra):
            pid = f"ledger|again-{uuid.uuid4().hex[:6]}"
            ser_id, manifest, payload = SER.encode(Appended("op-1", 5))
            group = [
                StoredEvent(pid, 1, payload, manifest, ser_id, _now(), "writer-a"),
                StoredEvent(pid, 2, payload + b" ", manifest, ser_id, _now(), "writer-a"),
            ]
            await journal.append(group)
            await journal.append(group)  # delivered twice: one write
            assert [e.sequence_nr async for e in journal.replay(pid)] == [1, 2]
            with pytest.raises(ConcurrentWriteError):
                await journal.append([replace(group[0], writer_id="writer-b")])
            with pytest.raises(ConcurrentWriteError):
                await journal.append([group[0], replace(group[1], payload=b"other")])
            with pytest.raises(ConcurrentWriteError):  # the same rows plus a new one: a rival
                await journal.append([*group, replace(group[1], sequence_nr=3)])
            assert await journal.highest_sequence_nr(pid) == 2
    finally:
        await cassandra.close()


def _now():
    from datetime import datetime

    return datetime.now(UTC)


async def test_the_driver_never_re_sends_a_journal_append(config, monkeypatch) -> None:
    """The journal's conditional batch is not re-sent by the driver after a lost response
    (two coordinators available): exactly one execution reaches Cassandra."""
    journal = await CassandraJournal.connect(config)
    two_coordinators(journal, monkeypatch)
    hook = LostResponse("drop")
    hook.install(monkeypatch)
    pid = f"ledger|once-{uuid.uuid4().hex[:6]}"
    ser_id, manifest, payload = SER.encode(Appended("op-1", 5))
    try:
        hook.armed = True
        await journal.append([StoredEvent(pid, 1, payload, manifest, ser_id, _now(), "w")])
        await asyncio.sleep(0.1)
    finally:
        await journal.close()
    assert hook.fired == 1 and hook.seen_after == 0  # no second execution came back
