"""Second hostile review of the epoch guard: an append delivered again after its first delivery
passed the fence read but failed in its follow-up writes (tag rows) is acknowledged only with
its tag rows written (it used to return early: acknowledged, and absent from its tag stream)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import OutcomeUnknownError

pytestmark = pytest.mark.cassandra


async def test_a_redelivered_append_writes_its_tag_rows(cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    cfg = CassandraConfig(
        contact_points=(host,),
        port=port,
        keyspace=cassandra_keyspace,
        eventual_consistency_delay=0.3,
    )
    s = await CassandraSession.open(cfg, create_schema=True)
    try:
        j = CassandraJournal(s, cfg)
        p, tag = f"rd-{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:6]}"
        await j.begin_activation(p, "w1")
        ev = [StoredEvent(p, 1, b"a", "m", 1, datetime.now(UTC), "w1", frozenset({tag}))]

        async def fail_after_fence(step: str, **info: Any) -> None:
            if step == "append.after_fence":  # stands in for a failed tag write
                raise OutcomeUnknownError("crash between the fence read and the tag rows")

        j.hook = fail_after_fence
        with pytest.raises(OutcomeUnknownError):
            await j.append(ev)
        j.hook = None
        await j.append(ev)  # delivered again: acknowledged now
        reader = CassandraJournal(s, cfg)
        deadline = time.monotonic() + 60  # the tag stream shows it after the visibility delay
        seen: list[int] = []
        while time.monotonic() < deadline:
            seen = [t.event.sequence_nr async for t in reader.events_by_tag(tag)]
            if seen:
                break
            await asyncio.sleep(0.2)
        assert seen == [1], "an acknowledged event is missing from its tag stream"
    finally:
        await s.close()
