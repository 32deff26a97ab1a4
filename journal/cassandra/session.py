"""``CassandraSession``: an asyncio API over cassandra-driver.

For the journal and snapshot store, and for services that keep their own tables (the seed's
alternative to the persistence module). Nothing here blocks the event loop:

* queries go through ``Session.execute_async``; the driver's ``ResponseFuture`` is bridged to
  an asyncio future with ``add_callbacks`` + ``loop.call_soon_threadsafe`` (the callbacks run
  on the driver's I/O thread);
* the unavoidable blocking calls (``Cluster.connect()``, ``Session.prepare()``,
  ``Cluster.shutdown()``) run in a dedicated, bounded ``ThreadPoolExecutor``.

The driver's default connection class is used (libev where compiled, as in this venv).

Retries and the classification of driver errors (not sent / not executed / outcome unknown):
:mod:`raysource.journal.cassandra.driver_errors`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cassandra import (
    UnresolvableContactPoints,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    ResponseFuture,
    Session,
)
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RoundRobinPolicy,
    TokenAwarePolicy,
)
from cassandra.query import (
    BatchStatement,
    BatchType,
    PreparedStatement,
    SimpleStatement,
    Statement,
    tuple_factory,
)

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.driver_errors import (
    NoResendRetryPolicy,
    consistency,
    framing_glitch,
    wrap_driver_error,
    writes,
)
from raysource.journal.errors import (
    JournalError,
    JournalUnavailableError,
)

__all__ = ["CassandraSession", "RAW_PROFILE"]

RAW_PROFILE = "raysource_raw"  # plain tuple rows: cheaper than named tuples on hot paths
_CONNECT_ATTEMPTS = 3  # a connect that met the driver's v5 framing glitch (framing_glitch)


class CassandraSession:
    """An asyncio session on one Cassandra cluster (keyspace from the config, if it exists).

    Use ``await CassandraSession(config).connect()`` (or ``async with``), then ``execute`` /
    ``select_one`` / ``select_all`` / ``stream`` with CQL text (prepared and cached on first
    use) or prepared/bound statements. Parameters are always bound, never interpolated.
    """

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self._executor = ThreadPoolExecutor(
            max_workers=config.executor_threads, thread_name_prefix="raysource-cassandra"
        )
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def driver_session(self) -> Session:
        """The underlying driver session (for benchmarks and tests)."""
        if self._session is None:
            raise JournalError("CassandraSession is not connected")
        return self._session

    async def connect(self, keyspace: str | None = None) -> CassandraSession:
        """Connect (idempotent). ``keyspace`` overrides the config's; pass ``""`` for none."""
        if self._session is not None:
            return self
        cfg = self.config
        if cfg.local_dc:
            lb = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc))
        else:
            lb = TokenAwarePolicy(RoundRobinPolicy())
        retry = NoResendRetryPolicy()
        profile = ExecutionProfile(
            load_balancing_policy=lb,
            retry_policy=retry,
            consistency_level=consistency(cfg.read_consistency),
            serial_consistency_level=consistency(cfg.serial_consistency),
            request_timeout=cfg.request_timeout,
        )
        raw = ExecutionProfile(
            load_balancing_policy=lb,
            retry_policy=retry,
            consistency_level=consistency(cfg.read_consistency),
            serial_consistency_level=consistency(cfg.serial_consistency),
            request_timeout=cfg.request_timeout,
            row_factory=tuple_factory,
        )
        kwargs: dict[str, Any] = {}
        if cfg.protocol_version is not None:
            kwargs["protocol_version"] = cfg.protocol_version
        credentials = cfg.credentials()  # a password file is read here, in this process
        if credentials is not None:
            kwargs["auth_provider"] = PlainTextAuthProvider(*credentials)
        ssl_context = cfg.client_ssl_context()  # built per process from picklable settings
        if ssl_context is not None:
            kwargs["ssl_context"] = ssl_context
        where = f"connect to {','.join(cfg.contact_points)}:{cfg.port}"
        ks = cfg.keyspace if keyspace is None else (keyspace or None)
        loop = asyncio.get_running_loop()
        for attempt in range(1, _CONNECT_ATTEMPTS + 1):
            try:
                cluster = Cluster(
                    contact_points=list(cfg.contact_points),
                    port=cfg.port,
                    execution_profiles={EXEC_PROFILE_DEFAULT: profile, RAW_PROFILE: raw},
                    connect_timeout=cfg.connect_timeout,
                    # The driver's default backs off to 600 s: a node back after a long outage
                    # was not used again for up to ten minutes.
                    reconnection_policy=ExponentialReconnectionPolicy(
                        base_delay=min(0.5, cfg.reconnect_max_delay),
                        max_delay=cfg.reconnect_max_delay,
                    ),
                    # The driver leaves Nagle on: every request over a few KB (a group-commit
                    # batch, a group's tag rows) then waits ~40 ms for a delayed ACK. Measured
                    # here: a 100-row batch 43.8 ms -> 0.4 ms with TCP_NODELAY.
                    sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                    **kwargs,
                )
            except UnresolvableContactPoints as exc:  # raised before anything is sent
                raise JournalUnavailableError(
                    f"{where}: no contact point resolves to an address ({exc!r})"
                ) from None
            try:
                session = await loop.run_in_executor(self._executor, cluster.connect, ks)
                break
            except Exception as exc:
                await loop.run_in_executor(self._executor, cluster.shutdown)
                if attempt < _CONNECT_ATTEMPTS and framing_glitch(exc):
                    continue  # a new Cluster: the failed one shut itself down
                raise wrap_driver_error(exc, where, sent=False) from exc
        self._cluster, self._session = cluster, session
        return self

    @classmethod
    async def open(
        cls, config: CassandraConfig, *, create_schema: bool = False
    ) -> CassandraSession:
        """The one bootstrap of a store session: connect without a keyspace (statements name
        theirs), create the keyspace and tables if asked (development only), and close again
        if any of that fails. The journal, the snapshot store, the host's stores and the
        read side all start here."""
        session = cls(config)
        await session.connect(keyspace="")
        try:
            if create_schema:
                from raysource.journal.cassandra.schema import create_schema as create

                await create(session, config)
        except BaseException:
            await session.close()
            raise
        return session

    async def set_keyspace(self, keyspace: str) -> None:
        from raysource.journal.cassandra.config import validate_identifier

        await self.execute(f"USE {validate_identifier(keyspace, 'keyspace')}", prepare=False)
        self._prepared.clear()

    async def close(self) -> None:
        """Shut the cluster down and the thread pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, cluster.shutdown)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> CassandraSession:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ statements

    async def prepare(
        self,
        cql: str,
        *,
        consistency_level: str | None = None,
        serial_consistency_level: str | None = None,
    ) -> PreparedStatement:
        """Prepare ``cql`` once per session (cached; the blocking driver call runs in the
        session's thread pool). Safe to use from several event loops in turn."""
        key = f"{cql}\x00{consistency_level}\x00{serial_consistency_level}"
        ps = self._prepared.get(key)
        if ps is not None:
            return ps
        try:
            ps = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.driver_session.prepare, cql
            )
            assert ps is not None
        except JournalError:
            raise
        except Exception as exc:
            raise wrap_driver_error(exc, f"prepare {cql!r}", sent=False) from exc
        if consistency_level:
            ps.consistency_level = consistency(consistency_level)
        if serial_consistency_level:
            ps.serial_consistency_level = consistency(serial_consistency_level)
        # Concurrent first callers may both prepare: harmless, the driver dedupes by id.
        return self._prepared.setdefault(key, ps)

    async def _statement(
        self, stmt: str | Statement | PreparedStatement, params: Sequence[Any] | None, prepare: bool
    ) -> tuple[Any, Any]:
        """(statement to execute, parameters still to pass to the driver)."""
        if isinstance(stmt, str):
            if prepare:
                return (await self.prepare(stmt)).bind(params or ()), None
            return SimpleStatement(stmt), params
        if isinstance(stmt, PreparedStatement):
            return stmt.bind(params or ()), None
        return stmt, params

    def _bridge(
        self, rf: ResponseFuture, what: str, may_write: bool = True
    ) -> asyncio.Future[tuple[list[Any], Any]]:
        """An asyncio future for one page: (rows, paging_state or None)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[list[Any], Any]] = loop.create_future()

        def _ok(rows: Any) -> None:
            # _paging_state is set by the driver before it runs callbacks; the public
            # has_more_pages property reads the same attribute.
            loop.call_soon_threadsafe(_resolve, fut, (list(rows or ()), rf._paging_state))

        def _err(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_fail, fut, exc, what, may_write)

        rf.add_callbacks(_ok, _err)
        return fut

    def execute_async(
        self,
        stmt: Any,
        params: Sequence[Any] | None = None,
        *,
        profile: str | None = None,
        paging_state: Any = None,
        timeout: float | None = None,
        what: str = "query",
    ) -> asyncio.Future[tuple[list[Any], Any]]:
        """Low level: start an already bound/built statement, return its first page future."""
        kwargs: dict[str, Any] = {}
        if paging_state is not None:
            kwargs["paging_state"] = paging_state
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            rf = self.driver_session.execute_async(
                stmt, params, execution_profile=profile or EXEC_PROFILE_DEFAULT, **kwargs
            )
        except Exception as exc:  # raised before the request went out
            raise wrap_driver_error(exc, what, sent=False) from exc
        return self._bridge(rf, what, writes(stmt))

    async def execute(
        self,
        stmt: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        *,
        prepare: bool = True,
        profile: str | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run one statement; return the rows of its first page (empty for writes)."""
        s, bound_params = await self._statement(stmt, params, prepare)
        rows, _ = await self.execute_async(
            s, bound_params, profile=profile, timeout=timeout, what=_describe(stmt)
        )
        return rows

    async def execute_batch(
        self, batch: BatchStatement, *, profile: str | None = None
    ) -> list[Any]:
        rows, _ = await self.execute_async(batch, profile=profile, what="batch")
        return rows

    async def execute_unlogged(
        self,
        ps: PreparedStatement,
        rows: Sequence[Sequence[Any]],
        *,
        consistency_level: str,
        idempotent: bool = True,
    ) -> None:
        """``ps`` bound to each of ``rows`` as ONE unlogged batch (meant for rows of one
        partition: one request, one mutation)."""
        batch = BatchStatement(BatchType.UNLOGGED, consistency_level=consistency(consistency_level))
        batch.is_idempotent = idempotent
        for row in rows:
            batch.add(ps, row)
        await self.execute_batch(batch)

    async def select_one(
        self,
        stmt: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        **kw: Any,
    ) -> Any | None:
        """The first row, or None."""
        rows = await self.execute(stmt, params, **kw)
        return rows[0] if rows else None

    async def select_all(
        self,
        stmt: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        **kw: Any,
    ) -> list[Any]:
        """Every row (all pages). For large results use ``stream``."""
        return [row async for row in self.stream(stmt, params, **kw)]

    async def stream(
        self,
        stmt: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        *,
        fetch_size: int | None = None,
        prepare: bool = True,
        profile: str | None = None,
    ) -> AsyncIterator[Any]:
        """Stream rows page by page (the driver's paging state). At most two pages are held:
        the one being consumed and the next one, fetched while the consumer works."""
        s, bound_params = await self._statement(stmt, params, prepare)
        s.fetch_size = fetch_size or self.config.fetch_size
        what = _describe(stmt)
        fut: asyncio.Future[tuple[list[Any], Any]] | None = self.execute_async(
            s, bound_params, profile=profile, what=what
        )
        try:
            while fut is not None:
                rows, state = await fut
                fut = None
                if state is not None:
                    fut = self.execute_async(
                        s, bound_params, profile=profile, paging_state=state, what=what
                    )
                for row in rows:
                    yield row
                del rows
        finally:
            if fut is not None and not fut.done():
                fut.cancel()


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException, what: str, may_write: bool) -> None:
    if not fut.done():
        err = wrap_driver_error(exc, what, may_write=may_write)
        err.__cause__ = exc
        fut.set_exception(err)


def _describe(stmt: Any) -> str:
    text = stmt if isinstance(stmt, str) else getattr(stmt, "query_string", None)
    if text is None and hasattr(stmt, "prepared_statement"):
        text = stmt.prepared_statement.query_string
    return (text or type(stmt).__name__)[:120]
