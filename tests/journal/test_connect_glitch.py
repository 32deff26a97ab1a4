"""A connect that meets cassandra-driver's protocol v5 framing glitch (``ConnectionShutdown('CRC
mismatch on header ...')`` from every contact point, PYTHON-1337) is tried again with a new
``Cluster``, up to ``_CONNECT_ATTEMPTS`` times; any other connect failure is not.

Seen once in a suite run: a host actor's store session failed to open on a loaded box, and the
benchmark it served died with ``JournalUnavailableError``. The glitch is injected into the real
driver's ``Cluster.connect`` (it raises before connecting), against the session's real node.
"""

from __future__ import annotations

import asyncio

import pytest
from cassandra.cluster import Cluster, NoHostAvailable
from cassandra.connection import ConnectionShutdown

from raysource.journal.cassandra import session as session_module
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.driver_errors import framing_glitch
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import JournalUnavailableError

pytestmark = pytest.mark.cassandra

CRC = ConnectionShutdown('CRC mismatch on header 39c3af. Received 85", computed fc9402.')


def _glitchy_cluster(failures: list[BaseException]) -> tuple[type[Cluster], list[int]]:
    """A real ``Cluster`` whose first ``len(failures)`` connects raise those errors (the driver
    shuts a cluster down after a failed connect; so does this one)."""
    calls: list[int] = []

    class Glitchy(Cluster):
        def connect(self, *args, **kwargs):  # type: ignore[override]
            calls.append(1)
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]
            return super().connect(*args, **kwargs)

    return Glitchy, calls


@pytest.fixture
def config(cassandra_contact) -> CassandraConfig:
    return CassandraConfig.from_contact(cassandra_contact, keyspace="system")


def _nha(*errors: BaseException) -> NoHostAvailable:
    return NoHostAvailable(
        "Unable to connect to any servers", {f"127.0.0.{i}:9042": e for i, e in enumerate(errors)}
    )


def test_framing_glitch_is_only_the_crc_error_from_every_host() -> None:
    assert framing_glitch(_nha(CRC))
    assert framing_glitch(_nha(CRC, CRC))
    assert not framing_glitch(_nha(CRC, ConnectionShutdown("Connection to 127.0.0.1 was closed")))
    assert not framing_glitch(_nha(ConnectionRefusedError(111, "refused")))
    assert not framing_glitch(_nha())
    assert not framing_glitch(CRC)


def test_a_connect_that_met_the_glitch_connects_again(monkeypatch, config) -> None:
    glitchy, calls = _glitchy_cluster([_nha(CRC), _nha(CRC)])
    monkeypatch.setattr(session_module, "Cluster", glitchy)

    async def run() -> str:
        async with CassandraSession(config) as s:
            row = await s.select_one("SELECT release_version FROM system.local")
            return row[0]

    assert asyncio.run(run()).startswith("5.")
    assert len(calls) == 3  # two glitches, then the real connect


def test_the_glitch_every_time_gives_up_after_the_bound(monkeypatch, config) -> None:
    attempts = session_module._CONNECT_ATTEMPTS
    glitchy, calls = _glitchy_cluster([_nha(CRC)] * (attempts + 1))
    monkeypatch.setattr(session_module, "Cluster", glitchy)
    with pytest.raises(JournalUnavailableError):
        asyncio.run(CassandraSession(config).connect())
    assert len(calls) == attempts


def test_other_connect_failures_are_not_retried(monkeypatch, config) -> None:
    refused = _nha(ConnectionRefusedError(111, "refused"))
    glitchy, calls = _glitchy_cluster([refused, refused])
    monkeypatch.setattr(session_module, "Cluster", glitchy)
    with pytest.raises(JournalUnavailableError):
        asyncio.run(CassandraSession(config).connect())
    assert len(calls) == 1
