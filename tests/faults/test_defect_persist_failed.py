"""Issue 10, defect 4: ``PersistFailedError`` only where the write provably did not happen.

``PersistFailedError`` tells a caller "not stored, safe to re-send". Before the fix, under a
frozen Cassandra 7 of 10 commands answered that way were in the journal: errors *after* the
request was sent (connection closed, server error, protocol v5's ``CAS_WRITE_UNKNOWN``) were
taken as definite failures, and a re-read that failed after an unknown outcome was answered
"failed" too.

Issue 23, item 1: Cassandra answers Overloaded (or IsBootstrapping) after a write was sent to a
replica, so on a write it is an unknown outcome decided by the journal's re-read
(``test_overloaded_after_the_write_landed``: the real batch is executed, its real answer is
replaced by Overloaded).

Faults are injected in the driver (real Cassandra): the journal's conditional batch is answered
with an error at the point a real node would, and, where the request had reached a coordinator,
the batch lands later (a proposal still in flight). Checked against the journal afterwards: a
command answered ``PersistFailedError`` is absent for good, an acknowledged one is there once,
an unknown outcome at most once.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture
from cassandra.connection import ConnectionException, ConnectionShutdown
from cassandra.protocol import (
    ErrorMessage,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
)
from cassandra.query import BatchStatement

from raysource.examples.ledger import LEDGER, Append, Appended
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.errors import (
    JournalOutcomeUnknownError,
    JournalUnavailableError,
    OutcomeUnknownError,
)
from raysource.runtime.core import EntityCore
from raysource.runtime.errors import PersistFailedError
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore

pytestmark = pytest.mark.cassandra

SER = serialization_for(LEDGER, StoreSpec())
LAND_AFTER = 1.0  # seconds after the error until a sent request lands


def _cas_write_unknown() -> ErrorMessage:
    # protocol v5 error 0x1700: cassandra-driver 3.x has no class for it (a bare ErrorMessage)
    return ErrorMessage(
        0x1700, "CAS operation result is unknown - proposal accepted by 1 but not a quorum.", None
    )


# kind -> (the error the driver hands the journal, was the request sent to a coordinator?)
FAULTS = {
    "cas_write_unknown": (_cas_write_unknown, True),
    "server_error": (lambda: ServerError(0x0000, "server shutting down", None), True),
    "connection_closed": (
        lambda: ConnectionShutdown("Connection to 127.0.0.1:9042 was closed"),
        True,
    ),
    "client_timeout": (
        lambda: OperationTimedOut({"127.0.0.1:9042": "Client request timeout"}),
        True,
    ),
    # Overloaded / IsBootstrapping after the mutation went to a replica (issue 23, item 1)
    "overloaded_in_flight": (
        lambda: OverloadedErrorMessage(0x1001, "Coordinator node overloaded", None),
        True,
    ),
    "bootstrapping_in_flight": (
        lambda: IsBootstrappingErrorMessage(0x1002, "Cannot perform", None),
        True,
    ),
    "no_host": (
        lambda: NoHostAvailable(
            "Unable to complete the operation against any hosts",
            {"127.0.0.1:9042": ConnectionException("Pool is shutdown")},
        ),
        False,
    ),
}


class SendFault:
    """Driver hook on ``ResponseFuture.send_request``: the next conditional batch gets ``error``
    instead of an answer. If the request counts as sent, it is executed ``LAND_AFTER`` seconds
    later (it lands after the caller was answered). Records the consistency of every statement
    sent after the fault."""

    def __init__(self, kind: str) -> None:
        self.make_error, self.sent = FAULTS[kind]
        self.armed = False
        self.landed = threading.Event()
        self.after: list[tuple[str, int]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ResponseFuture.send_request
        hook = self

        def send_request(fut, error_no_hosts=True):  # noqa: ANN001
            query = fut.query
            if not hook.armed and hook.after is not None and not hook.landed.is_set():
                cl = getattr(fut.message, "consistency_level", None)
                hook.after.append((type(query).__name__, cl))
            conditional = (
                isinstance(query, BatchStatement) and query.serial_consistency_level is not None
            )
            if hook.armed and conditional:
                hook.armed = False
                hook.after = []
                if hook.sent:
                    timer = threading.Timer(LAND_AFTER, hook._land, (fut.session, query))
                    timer.daemon = True
                    timer.start()
                fut._set_final_exception(hook.make_error())
                return True
            return original(fut, error_no_hosts)

        monkeypatch.setattr(ResponseFuture, "send_request", send_request)

    def _land(self, session, query) -> None:  # noqa: ANN001
        rf = session.execute_async(query)
        rf.add_callbacks(lambda _rows: self.landed.set(), lambda _exc: self.landed.set())


@pytest.fixture
async def config(cassandra_contact, cassandra_keyspace):
    # These faults hit the per-append guard's conditional batch (the epoch guard's unconfirmed
    # writes are covered by tests/faults/test_fence_schedules.py).
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,), port=port, keyspace=cassandra_keyspace, guard="per-append"
    )
    journal = await CassandraJournal.connect(cfg, create_schema=True)
    await journal.close()
    return cfg


async def _ops(cfg: CassandraConfig, eid: str) -> list[str]:
    """The journal's truth, as the next activation recovers it."""
    journal = await CassandraJournal.connect(cfg)
    core = EntityCore(LEDGER, eid, journal, InMemorySnapshotStore(), SER, writer_id="reader")
    try:
        await core.start()
        return [
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            async for e in journal.replay(LEDGER.persistence_id(eid))
        ]
    finally:
        await core.stop()
        await journal.close()


@pytest.mark.parametrize("kind", list(FAULTS))
async def test_persist_failed_only_for_writes_that_never_happen(config, monkeypatch, kind):
    eid = f"pf-{kind}-{uuid.uuid4().hex[:6]}"
    journal = await CassandraJournal.connect(config)
    fault = SendFault(kind)
    fault.install(monkeypatch)
    core = EntityCore(
        LEDGER, eid, journal, InMemorySnapshotStore(), SER, writer_id=uuid.uuid4().hex[:12]
    )
    try:
        assert await core.handle(Append("op-1", 5)) == 5
        fault.armed = True
        try:
            seen = ("reply", await core.handle(Append("op-2", 10)))
        except (PersistFailedError, OutcomeUnknownError) as exc:
            seen = (type(exc).__name__, exc)
        assert not fault.armed  # the fault fired
        if fault.sent:
            assert await asyncio.to_thread(fault.landed.wait, 10)
        else:
            await asyncio.sleep(LAND_AFTER)
        await core.stop()
    finally:
        await journal.close()
    ops = await _ops(config, eid)
    if isinstance(seen[1], PersistFailedError):
        assert ops == ["op-1"], f"{kind}: answered {seen[1]!r}, but the journal holds {ops}"
    elif seen[0] == "reply":
        assert ops == ["op-1", "op-2"]
    else:
        assert isinstance(seen[1], OutcomeUnknownError) and ops in (["op-1"], ["op-1", "op-2"])
    # the category the caller saw is the right one for where the fault happened
    assert isinstance(seen[1], PersistFailedError) == (not fault.sent), (kind, seen)
    if fault.sent:
        # the decisive read after the unknown outcome ran at the serial consistency
        assert any(cl == ConsistencyLevel.LOCAL_SERIAL for _name, cl in fault.after), fault.after


async def test_an_unconfirmed_append_over_a_rival_row_is_fenced_not_unknown(config, monkeypatch):
    """The serial read that decides an unconfirmed append finds another writer's row at its
    number: the append can never apply (its condition fails), so it is fenced, not unknown."""
    from datetime import datetime

    from raysource.journal.api import StoredEvent
    from raysource.journal.errors import ConcurrentWriteError

    pid = f"ledger|rival-{uuid.uuid4().hex[:6]}"
    ser_id, manifest, payload = SER.encode(Appended("op-1", 5))

    def event(writer: str) -> StoredEvent:
        return StoredEvent(pid, 1, payload, manifest, ser_id, datetime.now(UTC), writer)

    journal = await CassandraJournal.connect(config)
    try:
        await journal.append([event("rival")])
        fault = SendFault("client_timeout")
        fault.install(monkeypatch)
        fault.armed = True
        with pytest.raises(ConcurrentWriteError):
            await journal.append([event("stale")])
        assert await asyncio.to_thread(fault.landed.wait, 10)  # ran late, and was refused
        assert [e.writer_id async for e in journal.replay(pid)] == ["rival"]
    finally:
        await journal.close()


# Coordinator refusals that Cassandra can send after a write reached a replica (issue 23, 1).
REFUSALS = {
    "overloaded": lambda: OverloadedErrorMessage(0x1001, "Coordinator node overloaded", None),
    "is_bootstrapping": lambda: IsBootstrappingErrorMessage(0x1002, "Cannot perform", None),
}


class AnswerFault:
    """Driver hook on ``ResponseFuture._set_result``: the real answer to the next statement
    ``matches`` accepts (already executed by Cassandra) is replaced by ``error``, which the
    driver then hands to the retry policy as the node's answer. Counts every send of that
    statement (a re-send would show as a second one)."""

    def __init__(self, error, matches) -> None:  # noqa: ANN001
        self.error, self.matches = error, matches
        self.armed = False
        self.fired = 0
        self.real: list = []  # the answers Cassandra really gave
        self.sends = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original_set, original_send = ResponseFuture._set_result, ResponseFuture.send_request
        hook = self

        def send_request(fut, error_no_hosts=True):  # noqa: ANN001
            if hook.matches(fut.query) and (hook.armed or hook.fired):
                hook.sends += 1
            return original_send(fut, error_no_hosts)

        def _set_result(fut, host, connection, pool, response):  # noqa: ANN001
            if hook.armed and hook.matches(fut.query) and not isinstance(response, ErrorMessage):
                hook.armed = False
                hook.fired += 1
                hook.real.append(response)
                response = hook.error()
            return original_set(fut, host, connection, pool, response)

        monkeypatch.setattr(ResponseFuture, "send_request", send_request)
        monkeypatch.setattr(ResponseFuture, "_set_result", _set_result)


def _text(query) -> str:  # noqa: ANN001
    ps = getattr(query, "prepared_statement", None)
    return getattr(ps or query, "query_string", "") or ""


def _conditional(query) -> bool:  # noqa: ANN001
    return isinstance(query, BatchStatement) and query.serial_consistency_level is not None


@pytest.mark.parametrize("kind", list(REFUSALS))
async def test_overloaded_after_the_write_landed(config, monkeypatch, kind):
    """Cassandra executes the conditional append, then the coordinator's answer is Overloaded
    (IsBootstrapping): ``append`` must not raise "nothing written" (``JournalUnavailableError``
    proper). Its serial re-read finds the group: ``append`` returns, the group is stored once."""
    from datetime import datetime

    from raysource.journal.api import StoredEvent

    pid = f"ledger|ov-{kind}-{uuid.uuid4().hex[:6]}"
    journal = await CassandraJournal.connect(config)
    fault = AnswerFault(REFUSALS[kind], _conditional)
    fault.install(monkeypatch)

    def event(seq: int, op: str) -> StoredEvent:
        ser_id, manifest, payload = SER.encode(Appended(op, seq))
        return StoredEvent(pid, seq, payload, manifest, ser_id, datetime.now(UTC), "w")

    try:
        await journal.append([event(1, "op-1")])
        fault.armed = True
        await journal.append([event(2, "op-2"), event(3, "op-3")])  # decided by the re-read
        assert fault.fired == 1 and fault.sends == 1, (fault.fired, fault.sends)  # not re-sent
        assert fault.real[0].parsed_rows[0][0] is True  # Cassandra really applied the batch
        stored = [
            SER.decode(e.serializer_id, e.manifest, e.payload).op_id
            async for e in journal.replay(pid)
        ]
        assert stored == ["op-1", "op-2", "op-3"]
    finally:
        await journal.close()


@pytest.mark.parametrize("kind", list(REFUSALS))
async def test_overloaded_write_is_an_unknown_outcome_read_is_not(config, monkeypatch, kind):
    """At the session: a write (a plain unconditional statement, executed) answered Overloaded
    is ``JournalOutcomeUnknownError``; a read answered the same way wrote nothing:
    ``JournalUnavailableError`` and not the unknown outcome."""
    from raysource.journal.cassandra.session import CassandraSession

    ks = config.keyspace
    session = await CassandraSession.open(config)
    try:
        await session.execute(f"CREATE TABLE IF NOT EXISTS {ks}.ov (k text PRIMARY KEY, v int)")
        is_insert = lambda q: "INSERT INTO" in _text(q)  # noqa: E731
        fault = AnswerFault(REFUSALS[kind], is_insert)
        fault.install(monkeypatch)
        fault.armed = True
        with pytest.raises(JournalOutcomeUnknownError):
            await session.execute(
                f"INSERT INTO {ks}.ov (k, v) VALUES (%s, %s)", ("a", 1), prepare=False
            )
        assert fault.fired == 1 and fault.sends == 1
        assert await session.select_one(f"SELECT v FROM {ks}.ov WHERE k = 'a'") is not None
        is_select = lambda q: "SELECT v FROM" in _text(q)  # noqa: E731
        read_fault = AnswerFault(REFUSALS[kind], is_select)
        read_fault.install(monkeypatch)
        read_fault.armed = True
        with pytest.raises(JournalUnavailableError) as info:
            await session.select_one(f"SELECT v FROM {ks}.ov WHERE k = 'a'")
        assert read_fault.fired == 1
        assert type(info.value) is JournalUnavailableError, info.value
    finally:
        await session.close()
