"""Forgetting a data subject (crypto-shredding) and proving it after the fact.

:func:`forget_subject` destroys the subject's key in the Cassandra key store (every sealed
personal value of the subject, in events, tag rows and snapshots, is unreadable from then on),
waits ``settle`` seconds (the key rings of running processes drop a cached key within their
``max_age``; default 30 s), then sends each view a
:class:`~raysource.journal.personal.SubjectForgotten` signal: the projection handler's
``on_subject_forgotten`` scrubs its rows, and a row in ``subject_forget_signals`` records that
it did, so running forget again signals only the views that did not finish (effectively once).

:func:`verify_forgotten` checks the state afterwards, with a bound: the key is destroyed; every
table of the keyspace is scanned (at most ``limit`` rows each) for the given plaintexts (as
stored text, UTF-8 bytes and JSON-escaped); and every event, tag row and snapshot whose type
declares personal fields is decoded without keys to find personal values of the subject stored
unsealed (e.g. written before the field was marked personal). The report says what was checked
and where the bound stopped a scan (then nothing is proven beyond it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.keystore import CassandraKeyStore, key_ring
from raysource.journal.cassandra.keystore_statements import KeyStoreStatements
from raysource.journal.cassandra.session import RAW_PROFILE, CassandraSession
from raysource.journal.errors import ConfigError
from raysource.journal.keyring import FORGOTTEN, is_sealed
from raysource.journal.personal import SubjectForgotten, walk
from raysource.journal.serialization import Serialization
from raysource.readside.projections import ProjectionSpec
from raysource.runtime.aggregate import AggregateType

__all__ = [
    "ForgetReport",
    "VerifyReport",
    "example_views",
    "forget_subject",
    "forget_with_views",
    "verify_forgotten",
]

_SCANNED_TYPES = ("text", "varchar", "ascii", "blob")


@dataclass
class ForgetReport:
    subject: str
    forgotten_at_ms: int
    views: list[tuple[str, str]] = field(default_factory=list)  # (projection, what happened)

    def lines(self) -> list[str]:
        out = [f"subject {self.subject!r}: key destroyed"]
        out += [f"  view {name}: {what}" for name, what in self.views]
        return out


@dataclass
class VerifyReport:
    subject: str
    key: str = ""
    tables: list[tuple[str, int, bool]] = field(default_factory=list)  # (table, rows, bounded)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not any(bounded for _, _, bounded in self.tables)

    def lines(self) -> list[str]:
        out = [f"subject {self.subject!r}: key {self.key}"]
        for table, rows, bounded in self.tables:
            note = " (bound reached: rows beyond it not checked)" if bounded else ""
            out.append(f"  scanned {table}: {rows} rows{note}")
        out += [f"  FOUND {p}" for p in self.problems]
        verdict = "no plaintext found" if not self.problems else "plaintext remains"
        if not self.problems and not self.ok:
            verdict += " in the rows checked (not every row was checked)"
        return [*out, verdict]


def _check_subject(subject: str) -> str:
    if not subject or not subject.strip():
        raise ConfigError("a subject id must be non-empty")
    return subject


async def example_views(session: CassandraSession, keyspace: str) -> list[ProjectionSpec]:
    """The example reservations view where it is set up (its table exists in ``keyspace``):
    what ``raysource forget`` scrubs when no projection is named."""
    from raysource.examples.reservations_view import RESERVATIONS, VIEW_TABLE

    rows = await session.select_all(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
        (keyspace, VIEW_TABLE),
    )
    return [RESERVATIONS] if rows else []


async def forget_with_views(
    config: CassandraConfig,
    subject: str,
    projections: Sequence[ProjectionSpec] | None = None,
    *,
    settle: float = 30.0,
) -> ForgetReport:
    """:func:`forget_subject` on a session of its own; ``projections`` None: the
    :func:`example_views` that are set up."""
    session = await CassandraSession.open(config)
    try:
        chosen = (
            await example_views(session, config.keyspace) if projections is None else projections
        )
        return await forget_subject(config, subject, chosen, session=session, settle=settle)
    finally:
        await session.close()


async def forget_subject(
    config: CassandraConfig,
    subject: str,
    projections: Sequence[ProjectionSpec] = (),
    *,
    session: CassandraSession | None = None,
    settle: float = 30.0,
) -> ForgetReport:
    """Destroy ``subject``'s key, wait ``settle`` s, signal ``projections``' views (see the
    module docstring). Idempotent: run it again after a failure."""
    _check_subject(subject)
    own = session is None
    if session is None:
        session = await CassandraSession.open(config)
    try:
        ring = key_ring(config, session)
        await asyncio.to_thread(ring.forget, subject)
        at_ms = int(time.time() * 1000)
        report = ForgetReport(subject, at_ms)
        if projections and settle > 0:
            await asyncio.sleep(settle)
        cql = KeyStoreStatements(config.keyspace)
        for spec in projections:
            if await session.select_one(cql.signal_done, (subject, spec.name)) is not None:
                report.views.append((spec.name, "signalled before"))
                continue
            handler = spec.handler_factory(session, config)
            await handler.prepare()
            await handler.on_subject_forgotten(SubjectForgotten(subject, at_ms))
            await session.execute(cql.mark_signal, (subject, spec.name, at_ms))
            report.views.append((spec.name, "scrubbed"))
        return report
    finally:
        if own:
            await session.close()


def _needles(values: Iterable[str]) -> list[tuple[str, bytes, bytes]]:
    out = []
    for v in values:
        if not v:
            raise ConfigError("--value must be non-empty")
        escaped = json.dumps(v)[1:-1]
        out.append((v, v.encode(), escaped.encode()))
    return out


def _hit(value: Any, needles: list[tuple[str, bytes, bytes]]) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        for text, raw, escaped in needles:
            if raw in data or escaped in data:
                return text
        return None
    text_value = value if isinstance(value, str) else repr(value)
    for text, _, escaped in needles:
        if text in text_value or escaped.decode() in text_value:
            return text
    return None


async def verify_forgotten(
    config: CassandraConfig,
    subject: str,
    values: Sequence[str] = (),
    types: Sequence[AggregateType] = (),
    *,
    limit: int = 100_000,
    session: CassandraSession | None = None,
) -> VerifyReport:
    """Prove (up to ``limit`` rows per table) that ``subject`` is forgotten: see the module
    docstring. ``values``: plaintexts to look for; ``types``: the application's aggregate
    types (their personal fields are checked for unsealed values of the subject)."""
    _check_subject(subject)
    if limit < 1:
        raise ConfigError("--limit must be >= 1")
    needles = _needles(values)
    ser = Serialization()
    for t in types:
        t.register_types(ser)
    own = session is None
    if session is None:
        session = await CassandraSession.open(config)
    try:
        report = VerifyReport(subject)
        state = await asyncio.to_thread(CassandraKeyStore(config, session).load, subject)
        if state is None:
            report.key = "never created (nothing was sealed for this subject)"
        elif state.forgotten:
            report.key = "destroyed"
        else:
            report.key = "PRESENT"
            report.problems.append("the subject's key still exists (not forgotten)")
        cql = KeyStoreStatements(config.keyspace)
        columns: dict[str, list[str]] = {}
        rows = await session.select_all(cql.columns, profile=RAW_PROFILE)
        for table, column, kind in rows:
            if kind in _SCANNED_TYPES or "<" in kind:
                columns.setdefault(table, []).append(column)
        for table in sorted(columns):
            await _scan(session, config, table, columns[table], needles, ser, report, limit)
        return report
    finally:
        if own:
            await session.close()


async def _scan(
    session: CassandraSession,
    config: CassandraConfig,
    table: str,
    cols: list[str],
    needles: list[tuple[str, bytes, bytes]],
    ser: Serialization,
    report: VerifyReport,
    limit: int,
) -> None:
    typed = "manifest" in cols and "payload" in cols
    names = ", ".join(f'"{c}"' for c in cols)
    stmt = f"SELECT {names} FROM {config.keyspace}.{table} LIMIT {limit + 1}"
    count = 0
    async for row in session.stream(stmt, prepare=False, profile=RAW_PROFILE, fetch_size=1000):
        count += 1
        if count > limit:
            break
        for col, value in zip(cols, row):
            found = _hit(value, needles) if needles else None
            if found is not None:
                report.problems.append(f"{found!r} in {table}.{col} (row {count})")
        if typed:
            record = dict(zip(cols, row))
            unsealed = _unsealed(ser, record["manifest"], record["payload"], report.subject)
            report.problems += [
                f"unsealed {f} of the subject in {table} (row {count})" for f in unsealed
            ]
    report.tables.append((table, min(count, limit), count > limit))


def _unsealed(ser: Serialization, manifest: Any, payload: Any, subject: str) -> list[str]:
    """Personal fields of ``subject`` stored in clear in one payload (names of the fields)."""
    plan = ser.personal_plan(manifest) if isinstance(manifest, str) else None
    if plan is None or payload is None:
        return []
    try:
        doc = msgspec.json.decode(bytes(payload))
    except msgspec.DecodeError:
        return []
    found: list[str] = []

    def leaf(obj: dict[str, Any], name: str, subject_field: str) -> None:
        value = obj[name]
        if str(obj.get(subject_field)) != subject or value in (None, "", FORGOTTEN):
            return
        if not is_sealed(value):
            found.append(name)

    walk(doc, plan, leaf)
    return found
