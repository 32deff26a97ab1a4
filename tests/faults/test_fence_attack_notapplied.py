"""A W1 batch whose connection drops after it was sent is reported "not applied"
(JournalUnavailableError, epoch goes on) although Cassandra executed it.

Real Cassandra behind a TCP proxy that forwards the batch and then closes the client's
connection (a connection reset after send). W1 is marked idempotent (journal.py), so the
driver retries it on the next host, finds none, and raises NoHostAvailable whose per-host
error is a ConnectionException; session._never_sent() takes that as "never sent"."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.errors import JournalError, JournalOutcomeUnknownError

pytestmark = pytest.mark.cassandra


class Proxy:
    def __init__(self, up_host: str, up_port: int) -> None:
        self.up = (up_host, up_port)
        self.armed = False
        self.killed = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, cr, cw) -> None:
        ur, uw = await asyncio.open_connection(*self.up)

        async def down() -> None:  # server -> client
            try:
                while data := await ur.read(65536):
                    if cw.is_closing():
                        continue  # response to the killed request: dropped
                    cw.write(data)
                    await cw.drain()
            except Exception:  # noqa: BLE001
                pass

        t = asyncio.ensure_future(down())
        try:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()
                if self.armed and len(data) > 2000:  # the W1 batch (2 kB payload)
                    self.armed = False
                    self.killed += 1
                    cw.transport.abort()  # reset the client's connection after sending
                    return
        except Exception:  # noqa: BLE001
            pass
        finally:
            await asyncio.sleep(2)  # let the server finish the request
            uw.close()
            t.cancel()


async def test_sent_batch_is_not_reported_not_applied(cassandra_contact, cassandra_admin):
    host, port = cassandra_contact
    ks = f"atk_reset_{uuid.uuid4().hex[:8]}"
    cassandra_admin.execute(
        f"CREATE KEYSPACE {ks} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    proxy = Proxy(host, port)
    pport = await proxy.start()
    try:
        direct = await CassandraSession.open(
            CassandraConfig(contact_points=(host,), port=port, keyspace=ks), create_schema=True
        )
        cfg = CassandraConfig(
            contact_points=("127.0.0.1",), port=pport, keyspace=ks, reconnect_max_delay=1.0
        )
        s = await CassandraSession.open(cfg)
        j = CassandraJournal(s, cfg)
        p = "acct-1"
        await j.begin_activation(p, "w")

        async def hook(step: str, **info) -> None:
            if step == "append.before_w1":
                proxy.armed = True

        j.hook = hook
        ev = StoredEvent(p, 1, b"x" * 2500, "m", 1, datetime.now(UTC), "w")
        err: BaseException | None = None
        try:
            await j.append([ev])
        except JournalError as exc:
            err = exc
        assert proxy.killed == 1
        reader = CassandraJournal(direct, direct.config)
        stored = [e.sequence_nr async for e in reader.replay(p)]
        for _ in range(100):  # the row is there once the server finished the request
            if stored:
                break
            await asyncio.sleep(0.1)
            stored = [e.sequence_nr async for e in reader.replay(p)]
        print("append raised", type(err).__name__, err, "; log holds", stored)
        assert not stored or err is None or isinstance(err, JournalOutcomeUnknownError), (
            f"#1 is in the log, but the append said not applied: {type(err).__name__}: {err}"
        )
        await s.close()
        await direct.close()
    finally:
        proxy.server.close()
        cassandra_admin.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
