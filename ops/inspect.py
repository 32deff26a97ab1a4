"""Inspect and replay an aggregate's event log in a controlled environment (no Ray).

The seed's "event logs can be replayed in a controlled environment to understand how a state was
reached": these functions read the journal (and optionally the snapshot store) and fold the
events with the aggregate type's pure event handler, in this process. The live aggregate is never
activated, nothing is written, and no schema is created.

    async for entry in event_log(journal, None, SHOW, "42", from_seq=1, to_seq=10):
        print(entry.sequence_nr, entry.event)

    async for step in replay_states(journal, None, SHOW, "42", to_seq=10):
        for line in step.diff:
            print(line)        # reservations['A1']: <absent> -> 'alice'

``raysource events`` and ``raysource replay`` (``raysource.cli.aggregate``) are thin wrappers;
:func:`reading` opens the stores for them (and closes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import (
    ConfigError,
    JournalError,
    JournalUnavailableError,
    SerializationError,
)
from raysource.journal.serialization import Serialization
from raysource.ops.errors import InvalidRangeError, UnknownAggregateTypeError, UnknownEntityError
from raysource.runtime.aggregate import AggregateType

if TYPE_CHECKING:
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.snapshots.api import SnapshotStore

__all__ = [
    "ABSENT",
    "DEFAULT_APP",
    "LogEntry",
    "ReplayStep",
    "diff_states",
    "event_log",
    "load_app",
    "open_readonly",
    "reading",
    "replay_states",
    "resolve_type",
]

DEFAULT_APP = "raysource.examples.seats:SHOW"
ABSENT = "<absent>"
_MAX_DEPTH = 32


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One decoded journal entry of an aggregate."""

    sequence_nr: int
    timestamp: datetime
    manifest: str
    event: Any
    tags: frozenset[str]
    writer_id: str


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One step of a replay.

    The first step of every replay is its *origin* (``event is None``): the state the replay
    starts from, ``sequence_nr`` 0 for the initial state or the snapshot's sequence number
    (``from_snapshot`` True). Every later step is one event: ``state_after`` is
    ``event_handler(state_before, event)`` and ``diff`` lists what changed (see
    :func:`diff_states`).
    """

    sequence_nr: int
    event: Any
    state_before: Any
    state_after: Any
    diff: tuple[str, ...]
    timestamp: datetime | None = None
    from_snapshot: bool = False

    @property
    def is_origin(self) -> bool:
        return self.event is None


# --------------------------------------------------------------------------- type lookup


def resolve_type(name: str, types: Iterable[AggregateType]) -> AggregateType:
    """The aggregate type called ``name`` among ``types``.

    Raises :class:`UnknownAggregateTypeError` naming the known types when there is none.
    """
    known = list(types)
    for agg in known:
        if agg.name == name:
            return agg
    names = ", ".join(sorted(a.name for a in known)) or "none"
    raise UnknownAggregateTypeError(f"unknown aggregate type {name!r}; known types: {names}")


def load_app(spec: str = DEFAULT_APP) -> tuple[AggregateType, ...]:
    """Import ``"package.module:ATTR"`` and return the aggregate types it names.

    ``ATTR`` may be one :class:`AggregateType` or a sequence of them (dotted attribute paths
    work); the module is imported with the working directory on ``sys.path``. Raises
    :class:`ConfigError` for a malformed spec, a module that cannot be imported, a missing
    attribute or anything that is not aggregate types.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app expects module:ATTR (e.g. {DEFAULT_APP}), got {spec!r}")
    # Like uvicorn/gunicorn: the user's application module is found from the working directory
    # even when the console script's sys.path does not include it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the application module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from exc
    if isinstance(obj, AggregateType):
        return (obj,)
    if isinstance(obj, (Sequence, frozenset, set)) and not isinstance(obj, (str, bytes)):
        types = tuple(obj)
        if types and all(isinstance(t, AggregateType) for t in types):
            return types
    raise ConfigError(
        f"{spec} is not an AggregateType or a non-empty sequence of them "
        f"(got {type(obj).__qualname__})"
    )


# --------------------------------------------------------------------------- reading


async def open_readonly(
    config: CassandraConfig,
    *,
    snapshots: bool = False,
) -> tuple[Journal, SnapshotStore | None]:
    """Connect a Cassandra journal (and snapshot store if ``snapshots``) for reading only.

    Never creates a keyspace or table. Raises :class:`JournalUnavailableError` when Cassandra
    cannot be reached and :class:`JournalError` (naming the keyspace) when its tables are
    missing. The caller closes both.
    """
    from raysource.journal.cassandra.journal import CassandraJournal
    from raysource.snapshots.cassandra import CassandraSnapshotStore

    where = f"{','.join(config.contact_points)}:{config.port}"
    try:
        journal = await CassandraJournal.connect(config, create_schema=False)
    except JournalUnavailableError as exc:
        raise JournalUnavailableError(f"cannot reach Cassandra at {where}: {exc}") from exc
    except JournalError as exc:
        raise JournalError(
            f"cannot read the journal in keyspace {config.keyspace!r} at {where} "
            f"(does the keyspace exist and hold the raysource schema?): {exc}"
        ) from exc
    if not snapshots:
        return journal, None
    try:
        store = await CassandraSnapshotStore.connect(config, create_schema=False)
    except BaseException:
        await journal.close()
        raise
    return journal, store


@contextlib.asynccontextmanager
async def reading(
    config: CassandraConfig, *, snapshots: bool = False
) -> AsyncIterator[tuple[Journal, SnapshotStore | None]]:
    """:func:`open_readonly` as an ``async with``: the stores are closed on the way out."""
    journal, store = await open_readonly(config, snapshots=snapshots)
    try:
        yield journal, store
    finally:
        await journal.close()
        if store is not None:
            await store.close()


def _serialization(
    serialization: Serialization | None, agg: AggregateType, journal: Journal
) -> Serialization:
    if serialization is None:  # personal fields open with the key store beside the journal
        from raysource.journal.cassandra.keystore import key_ring_beside

        serialization = Serialization(keys=key_ring_beside(journal))
    ser = serialization
    agg.register_types(ser)  # idempotent: keeps classes the caller registered itself
    return ser


def _decode(ser: Serialization, stored: StoredEvent) -> Any:
    return ser.decode(
        stored.serializer_id,
        stored.manifest,
        stored.payload,
        persistence_id=stored.persistence_id,
        sequence_nr=stored.sequence_nr,
    )


async def _highest(journal: Journal, agg: AggregateType, entity_id: str) -> tuple[str, int]:
    pid = agg.persistence_id(entity_id)
    highest = await journal.highest_sequence_nr(pid)
    if highest == 0:
        raise UnknownEntityError(
            f"no events for {agg.name} {entity_id!r} (persistence id {pid!r}): the entity was "
            f"never written, or the id, type or keyspace is wrong"
        )
    return pid, highest


async def event_log(
    journal: Journal,
    serialization: Serialization | None,
    aggregate_type: AggregateType,
    entity_id: str,
    from_seq: int = 1,
    to_seq: int | None = None,
) -> AsyncIterator[LogEntry]:
    """Stream the decoded events ``from_seq..to_seq`` (inclusive) of one entity, in order.

    ``serialization`` None: a fresh one with the aggregate's types registered (the aggregate's
    types are registered into a given one too). ``to_seq`` None or beyond the highest sequence
    number reads to the end. Logically deleted events are not returned.

    Raises (on first iteration) :class:`InvalidRangeError` if ``from_seq < 1``,
    ``to_seq < from_seq`` or ``from_seq`` is beyond the highest sequence number;
    :class:`UnknownEntityError` if the entity has no events; ``SerializationError`` (naming
    persistence id and sequence number) for an event that cannot be decoded.
    """
    if from_seq < 1:
        raise InvalidRangeError(f"--from must be >= 1, got {from_seq}")
    if to_seq is not None and to_seq < from_seq:
        raise InvalidRangeError(f"--to ({to_seq}) is below --from ({from_seq})")
    ser = _serialization(serialization, aggregate_type, journal)
    pid, highest = await _highest(journal, aggregate_type, entity_id)
    if from_seq > highest:
        raise InvalidRangeError(
            f"--from {from_seq} is beyond the last event of {pid!r} (sequence number {highest})"
        )
    async for stored in journal.replay(pid, from_seq, to_seq):
        yield LogEntry(
            stored.sequence_nr,
            stored.timestamp,
            stored.manifest,
            _decode(ser, stored),
            stored.tags,
            stored.writer_id,
        )


async def replay_states(
    journal: Journal,
    serialization: Serialization | None,
    aggregate_type: AggregateType,
    entity_id: str,
    to_seq: int | None = None,
    *,
    snapshots: SnapshotStore | None = None,
) -> AsyncIterator[ReplayStep]:
    """Rebuild the state of one entity up to ``to_seq`` (default: its last event), step by step.

    Yields the origin step first (see :class:`ReplayStep`), then one step per event with the
    state before and after it and their diff; the last step's ``state_after`` is the state at
    ``to_seq``. Runs only the aggregate type's event handler, in this process: the live
    aggregate is not activated and nothing is written.

    With ``snapshots``, starts from the newest decodable snapshot at or below ``to_seq``
    (undecodable ones are skipped, as recovery does); without, from the initial state.

    Raises :class:`UnknownEntityError` (no events), :class:`InvalidRangeError` (``to_seq < 1``
    or beyond the highest sequence number), :class:`JournalError` if events the replay needs
    were deleted (or are missing), ``SerializationError`` for an undecodable event.
    """
    if to_seq is not None and to_seq < 1:
        raise InvalidRangeError(f"--to must be >= 1, got {to_seq}")
    ser = _serialization(serialization, aggregate_type, journal)
    pid, highest = await _highest(journal, aggregate_type, entity_id)
    if to_seq is None:
        to_seq = highest
    elif to_seq > highest:
        raise InvalidRangeError(
            f"--to {to_seq} is beyond the last event of {pid!r} (sequence number {highest})"
        )

    state, seq, from_snapshot = aggregate_type.initial_state, 0, False
    if snapshots is not None:
        loaded = await _load_snapshot(snapshots, ser, pid, to_seq)
        if loaded is not None:
            state, seq = loaded
            from_snapshot = True
    yield ReplayStep(seq, None, state, state, (), None, from_snapshot)

    handler = aggregate_type.event_handler
    async for stored in journal.replay(pid, seq + 1, to_seq):
        if stored.sequence_nr != seq + 1:
            # Without these events the rebuilt state would silently differ from the real one.
            raise JournalError(
                f"{pid!r}: events {seq + 1}..{stored.sequence_nr - 1} are missing (deleted?); "
                f"the state cannot be rebuilt from "
                f"{'the snapshot' if from_snapshot else 'the initial state'}"
                f"{'' if from_snapshot else ' (try replaying from a snapshot)'}"
            )
        event = _decode(ser, stored)
        before, state = state, handler(state, event)
        seq = stored.sequence_nr
        yield ReplayStep(
            seq, event, before, state, tuple(diff_states(before, state)), stored.timestamp
        )
    if seq < to_seq:
        raise JournalError(f"{pid!r}: the journal ended at {seq}, expected events up to {to_seq}")


async def _load_snapshot(
    store: SnapshotStore, ser: Serialization, pid: str, max_seq: int
) -> tuple[Any, int] | None:
    while max_seq >= 1:
        snap = await store.load(pid, max_seq)
        if snap is None:
            return None
        try:
            return ser.decode(
                snap.serializer_id,
                snap.manifest,
                snap.payload,
                persistence_id=pid,
                sequence_nr=snap.sequence_nr,
            ), snap.sequence_nr
        except SerializationError:
            max_seq = snap.sequence_nr - 1
    return None


def scrub_forgotten(state: Any, aggregate_type: AggregateType, config: CassandraConfig) -> Any:
    """``state`` with the personal data of forgotten subjects replaced by the placeholder (a
    live aggregate keeps what it decoded before a forget until it recovers again)."""
    from raysource.journal.cassandra.keystore import CassandraKeyStore, key_ring

    ser = Serialization(keys=key_ring(config))
    aggregate_type.register_types(ser)
    try:
        return ser.scrub(state)
    finally:
        store = ser.keys.store
        if isinstance(store, CassandraKeyStore):
            store.close()


# --------------------------------------------------------------------------- diff


def diff_states(before: Any, after: Any, path: str = "") -> list[str]:
    """Readable lines describing how ``after`` differs from ``before`` (empty if equal).

    Walks dataclass fields (``name.field``), mapping keys (``name[key]``), list/tuple items
    (``name[i]``) and set members, recursively; any other difference is one line
    ``path: old -> new`` with reprs, ``<absent>`` for a key/item that does not exist on one
    side. Example: ``reservations['A1']: <absent> -> 'alice'``. ``path`` names the root;
    when empty, a dataclass root's fields appear bare and any other root is called ``state``.
    """
    out: list[str] = []
    _diff(before, after, path, out, 0)
    return out


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an odd __eq__ must not break inspection
        return False


def _line(path: str, before: Any, after: Any) -> str:
    old = ABSENT if before is _MISSING else repr(before)
    new = ABSENT if after is _MISSING else repr(after)
    return f"{path or 'state'}: {old} -> {new}"


class _Missing:
    pass


_MISSING: Any = _Missing()


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _diff(before: Any, after: Any, path: str, out: list[str], depth: int) -> None:
    if _same(before, after):
        return
    if depth >= _MAX_DEPTH or before is _MISSING or after is _MISSING:
        out.append(_line(path, before, after))
        return
    if _is_dataclass_instance(before) and type(before) is type(after):
        for f in dataclasses.fields(before):
            sub = f"{path}.{f.name}" if path else f.name
            _diff(
                getattr(before, f.name, _MISSING),
                getattr(after, f.name, _MISSING),
                sub,
                out,
                depth + 1,
            )
        return
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = list(before) + [k for k in after if k not in before]
        for key in keys:
            _diff(
                before.get(key, _MISSING),
                after.get(key, _MISSING),
                f"{path or 'state'}[{key!r}]",
                out,
                depth + 1,
            )
        return
    if isinstance(before, (list, tuple)) and type(before) is type(after):
        for i in range(max(len(before), len(after))):
            _diff(
                before[i] if i < len(before) else _MISSING,
                after[i] if i < len(after) else _MISSING,
                f"{path or 'state'}[{i}]",
                out,
                depth + 1,
            )
        return
    if isinstance(before, (set, frozenset)) and isinstance(after, (set, frozenset)):
        name = path or "state"
        out.extend(f"{name}: removed {x!r}" for x in _sorted(before - after))
        out.extend(f"{name}: added {x!r}" for x in _sorted(after - before))
        return
    out.append(_line(path, before, after))


def _sorted(items: Iterable[Any]) -> list[Any]:
    items = list(items)
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=repr)
