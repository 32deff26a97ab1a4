"""Issue 23, item 2: every decision of ``NoResendRetryPolicy``, and that both driver execution
profiles of a session carry it.

Each ``on_*`` is called with the arguments for which the driver's default policy *would* re-send
(so removing an override fails here), for a non-idempotent conditional batch (re-throw) and for
an idempotent statement (the default decision). Then, on the real node, a real write through
each profile is answered with each error kind after Cassandra executed it: it is sent exactly
once and the caller gets the unknown outcome; an idempotent statement under the same answer is
re-sent, which shows the send counter sees a re-send.
"""

from __future__ import annotations

import uuid

import pytest
from cassandra import ConsistencyLevel, WriteType
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.policies import RetryPolicy
from cassandra.protocol import (
    OverloadedErrorMessage,
    ReadTimeoutErrorMessage,
    ServerError,
    UnavailableErrorMessage,
    WriteTimeoutErrorMessage,
)
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from test_defect_persist_failed import AnswerFault, _text

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.driver_errors import NoResendRetryPolicy
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import JournalOutcomeUnknownError

ONE, SERIAL = ConsistencyLevel.ONE, ConsistencyLevel.LOCAL_SERIAL

# decision -> the arguments under which the driver's default policy re-sends
CALLS = {
    "on_read_timeout": dict(
        consistency=SERIAL,
        required_responses=1,
        received_responses=1,
        data_retrieved=False,
        retry_num=0,
    ),
    "on_write_timeout": dict(
        consistency=ONE,
        write_type=WriteType.BATCH_LOG,
        required_responses=1,
        received_responses=0,
        retry_num=0,
    ),
    "on_unavailable": dict(consistency=ONE, required_replicas=1, alive_replicas=0, retry_num=0),
    "on_request_error": dict(
        consistency=ONE, error=OverloadedErrorMessage(0x1001, "o", None), retry_num=0
    ),
}


def _conditional_batch() -> BatchStatement:
    batch = BatchStatement(BatchType.LOGGED, serial_consistency_level=SERIAL)
    batch.add(SimpleStatement("INSERT INTO ks.t (k) VALUES ('a') IF NOT EXISTS"))
    return batch


@pytest.mark.parametrize("decision", sorted(CALLS))
def test_a_non_idempotent_batch_is_never_resent(decision: str) -> None:
    default = getattr(RetryPolicy(), decision)(_conditional_batch(), **CALLS[decision])
    assert default[0] in (RetryPolicy.RETRY, RetryPolicy.RETRY_NEXT_HOST)  # the default would
    ours = getattr(NoResendRetryPolicy(), decision)(_conditional_batch(), **CALLS[decision])
    assert ours == (RetryPolicy.RETHROW, None)


@pytest.mark.parametrize("decision", sorted(CALLS))
def test_an_idempotent_statement_keeps_the_default_decision(decision: str) -> None:
    stmt = SimpleStatement("SELECT k FROM ks.t", is_idempotent=True)
    assert getattr(NoResendRetryPolicy(), decision)(stmt, **CALLS[decision]) == getattr(
        RetryPolicy(), decision
    )(stmt, **CALLS[decision])


# error kind -> the node's answer (after the real execution)
ANSWERS = {
    "unavailable": lambda: UnavailableErrorMessage(
        0x1000,
        "Cannot achieve consistency",
        {"consistency": ONE, "required_replicas": 1, "alive_replicas": 0},
    ),
    "write_timeout": lambda: WriteTimeoutErrorMessage(
        0x1100,
        "timeout",
        {
            "consistency": ONE,
            "required_responses": 1,
            "received_responses": 0,
            "write_type": WriteType.BATCH_LOG,
        },
    ),
    "read_timeout": lambda: ReadTimeoutErrorMessage(
        0x1200,
        "timeout",
        {
            "consistency": SERIAL,
            "required_responses": 1,
            "received_responses": 1,
            "data_retrieved": False,
        },
    ),
    "overloaded": lambda: OverloadedErrorMessage(0x1001, "Coordinator node overloaded", None),
    "server_error": lambda: ServerError(0x0000, "server error", None),
}


@pytest.fixture
async def session(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    s = await CassandraSession.open(cfg)
    await s.execute(
        f"CREATE TABLE IF NOT EXISTS {cassandra_keyspace}.rp (k text PRIMARY KEY, v int)"
    )
    yield s
    await s.close()


@pytest.mark.cassandra
async def test_both_profiles_carry_the_policy(session) -> None:
    profiles = session.driver_session.cluster.profile_manager.profiles
    for name in (EXEC_PROFILE_DEFAULT, RAW_PROFILE):
        assert type(profiles[name].retry_policy) is NoResendRetryPolicy, name


@pytest.mark.cassandra
@pytest.mark.parametrize("profile", [None, RAW_PROFILE])
@pytest.mark.parametrize("kind", sorted(ANSWERS))
async def test_a_real_batch_answered_with_an_error_is_sent_once(
    session, monkeypatch, kind, profile
) -> None:
    ks = session.config.keyspace
    key = uuid.uuid4().hex[:8]
    batch = BatchStatement(BatchType.LOGGED, serial_consistency_level=SERIAL)
    batch.add(SimpleStatement(f"INSERT INTO {ks}.rp (k, v) VALUES (%s, 1) IF NOT EXISTS"), (key,))
    fault = AnswerFault(ANSWERS[kind], lambda q: q is batch)
    fault.install(monkeypatch)
    fault.armed = True
    with pytest.raises(JournalOutcomeUnknownError):
        await session.execute_batch(batch, profile=profile)
    assert (fault.fired, fault.sends) == (1, 1), (kind, profile, fault.fired, fault.sends)
    assert await session.select_one(f"SELECT v FROM {ks}.rp WHERE k = ?", (key,)) is not None


@pytest.mark.cassandra
async def test_the_send_counter_sees_a_resend(session, monkeypatch) -> None:
    """The contrast that makes ``sends == 1`` above mean something: an idempotent statement
    answered Unavailable is re-sent (to the next host; one node: none left)."""
    ks = session.config.keyspace
    stmt = SimpleStatement(f"INSERT INTO {ks}.rp (k, v) VALUES ('idem', 1)", is_idempotent=True)
    fault = AnswerFault(ANSWERS["unavailable"], lambda q: "'idem'" in _text(q))
    fault.install(monkeypatch)
    fault.armed = True
    with pytest.raises(JournalOutcomeUnknownError):
        await session.execute(stmt)
    assert fault.fired == 1 and fault.sends == 2, (fault.fired, fault.sends)
