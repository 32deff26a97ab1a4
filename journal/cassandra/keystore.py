"""The Cassandra key store of personal data (:class:`~raysource.journal.keyring.KeyStore`).

Synchronous by contract (a key ring calls it on cache misses, from inside ``encode`` and
``decode``): each call is one blocking driver request on the calling thread (a read, or a
lightweight transaction to create or destroy a key). Given a connected
:class:`~raysource.journal.cassandra.session.CassandraSession` it uses that session's driver
session; given only a config it connects on first use, in a helper thread, and keeps the
connection for the process. Picklable (as its config): a Ray actor connects its own.
The CQL is :mod:`raysource.journal.cassandra.keystore_statements`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.driver_errors import wrap_driver_error
from raysource.journal.cassandra.keystore_statements import KeyStoreStatements
from raysource.journal.cassandra.session import CassandraSession
from raysource.journal.keyring import SCHEME, KeyRing, KeyState, KeyStore
from raysource.journal.kms import WrappedKeyStore

__all__ = ["CassandraKeyStore", "key_ring", "key_ring_beside"]


class CassandraKeyStore:
    """Subjects' keys in ``<keyspace>.subject_keys`` (see the module docstring)."""

    def __init__(self, config: CassandraConfig, session: CassandraSession | None = None) -> None:
        self.config = config
        self.cql = KeyStoreStatements(config.keyspace)
        self._session = session
        self._own: CassandraSession | None = None
        self._ps: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CassandraKeyStore({self.config.keyspace}.subject_keys)"

    def _driver(self) -> Any:
        if self._session is not None:
            return self._session.driver_session
        with self._lock:
            if self._own is None:
                session = CassandraSession(self.config)
                _in_thread(lambda: session.connect(keyspace=""))
                self._own = session
            return self._own.driver_session

    def _run(self, name: str, params: tuple[Any, ...], *, writes: bool) -> Any:
        driver = self._driver()
        try:
            ps = self._ps.get(name)
            if ps is None:
                ps = self._ps[name] = driver.prepare(getattr(self.cql, name))
            return driver.execute(ps, params, timeout=self.config.request_timeout)
        except Exception as exc:
            raise wrap_driver_error(exc, f"key store {name}", may_write=writes) from exc

    def create_tables(self) -> None:
        for stmt in self.cql.create:
            self._driver().execute(stmt, timeout=60.0)

    def load(self, subject: str) -> KeyState | None:
        row = self._run("load", (subject,), writes=False).one()
        if row is None:
            return None
        key, forgotten_ms = row[0], row[1]
        if forgotten_ms is not None:
            return KeyState(None, forgotten=True)
        return KeyState(bytes(key)) if key is not None else None

    def create(self, subject: str, key: bytes) -> KeyState:
        now = int(time.time() * 1000)
        rs = self._run("insert", (subject, key, SCHEME, now), writes=True)
        if rs.was_applied:
            return KeyState(key)
        state = self.load(subject)  # another process created it first, or it was forgotten
        if state is None:  # a row without key or mark cannot be left by this store
            raise RuntimeError(f"key store row of subject {subject!r} is incomplete")
        return state

    def destroy(self, subject: str, at_ms: int) -> None:
        if not self._run("insert_forgotten", (subject, at_ms), writes=True).was_applied:
            self._run("destroy", (at_ms, subject), writes=True)

    def close(self) -> None:
        """Close the connection this store opened itself (a given session is the caller's)."""
        own, self._own = self._own, None
        if own is not None:
            _in_thread(own.close)


def _in_thread(make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run a coroutine of the session on its own loop in a helper thread (the caller may be
    inside a running loop: ``encode`` is called from async code), and wait for it."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=run, name="raysource-keystore")
    t.start()
    t.join()
    if failure:
        raise failure[0]


def key_ring(
    config: CassandraConfig, session: CassandraSession | None = None, **settings: Any
) -> KeyRing:
    """A key ring on the Cassandra key store of ``config``'s keyspace (``settings``:
    ``max_keys``, ``max_age``); its keys wrapped by ``config.key_wrapper`` if one is set."""
    store: KeyStore = CassandraKeyStore(config, session)
    if config.key_wrapper is not None:
        store = WrappedKeyStore(store, config.key_wrapper)
    return KeyRing(store, **settings)


def key_ring_beside(journal: object) -> KeyRing | None:
    """The key ring that belongs with ``journal``: the Cassandra key store of its keyspace
    (sharing its session) for a Cassandra journal, None (the in-memory default) otherwise."""
    from raysource.journal.cassandra.journal import CassandraJournal

    if isinstance(journal, CassandraJournal):
        return key_ring(journal.config, journal.session)
    return None
