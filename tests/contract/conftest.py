"""Backends for the contract suite: every test gets a ``backend`` that makes journals and
snapshot stores of one implementation (in-memory, or Cassandra on the session's real node)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.schema import create_schema
from raysource.journal.cassandra.session import CassandraSession
from raysource.testing.contract_backend import Backend

# The Cassandra tag query only returns rows older than this (see journal.cassandra); kept
# small so the contract tests do not wait long.
TAG_DELAY = 0.4
CASSANDRA_PROPERTY_EXAMPLES = 10


@pytest.fixture(scope="module")
def cassandra_backend_session(cassandra_contact, cassandra_keyspace) -> Iterator[Backend]:
    cfg = CassandraConfig.from_contact(
        cassandra_contact,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=TAG_DELAY,
        tag_write_budget=TAG_DELAY / 2,
        request_timeout=30.0,
        fetch_size=500,
    )
    session = CassandraSession(cfg)

    async def setup() -> None:
        await session.connect(keyspace="")
        await create_schema(session, cfg, keyspace=False)

    asyncio.run(setup())
    yield Backend(
        "cassandra",
        session,
        cfg,
        tag_visibility_delay=TAG_DELAY + 0.15,
        property_examples=CASSANDRA_PROPERTY_EXAMPLES,
    )
    asyncio.run(session.close())


@pytest.fixture(
    params=["memory", pytest.param("cassandra", marks=pytest.mark.cassandra)],
)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory")
    shared: Backend = request.getfixturevalue("cassandra_backend_session")
    return Backend(
        "cassandra",
        shared.session,
        shared.config,
        shared.tag_visibility_delay,
        property_examples=CASSANDRA_PROPERTY_EXAMPLES,
    )
