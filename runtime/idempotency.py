"""Idempotency keys: a command sent twice under one key is applied at most once.

Ray-free; used by the entity core (:mod:`raysource.runtime.core`) and the references
(:mod:`raysource.runtime.actors.refs`).

* :class:`Keyed` is the envelope a command travels in when it carries a key (from the
  reference through the host actor and the host to the core, unchanged; the reorder buffer and
  the mailbox never look inside). The core unwraps it.
* :class:`KeyTable` is one activation's memory of applied keys, bounded by the type's
  :class:`~raysource.runtime.aggregate.IdempotencyPolicy` (``max_keys``, least recently
  applied dropped first; ``max_age_s`` measured from the command's event timestamp).

Where a key is stored: in the ``metadata`` of the **first event** of the command that applied
it, in the same atomic append as its events (``{"ik": key, "ir": encoded reply}``), so a key
is durable exactly when its events are. The reply is encoded with the aggregate's
serialization (``"<serializer id>|<manifest>|<base64 payload>"``); a reply the serialization
cannot encode fails its command (``UnserializableError``, nothing written) while keys are on.
Recovery rebuilds the table from the snapshot (see below) and the replayed events.
A rejection is remembered in memory only (it writes nothing, so deciding it again after a
restart is safe; it may then be decided differently, on the newer state). Read-only answers
(``reply``/``none`` effects) are not remembered: re-reading is harmless.

Snapshots carry the table in an **envelope**: when the table holds keys (or the aggregate has
pending durable timers), the snapshot's payload is ``msgpack({"s": [serializer id, manifest,
state payload], "k": [[key, timestamp (epoch s), reply], ...], "t": [pending timer, ...]})`` under
the manifest :data:`KEYED_SNAPSHOT_MANIFEST`. No schema or snapshot-store change is needed; a reader
that does not know the envelope (an older raysource, ``raysource inspect``) cannot decode it and
falls back to an older snapshot or a full replay, as for any undecodable snapshot (correct, slower).
A snapshot store that loses snapshots loses nothing but speed: keys then come from the replayed
events only (those after the snapshot used), so a retry of a key applied before that snapshot would
be applied again.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from raysource.journal.api import StoredEvent, StoredSnapshot
from raysource.journal.errors import (
    ConfigError,
    CorruptPayloadError,
    OutcomeUnknownError,
    SerializationError,
)
from raysource.journal.serialization import JSON_SERIALIZER_ID, Serialization
from raysource.runtime.aggregate import IdempotencyPolicy
from raysource.runtime.errors import CommandRejected, HandlerError, UnknownCommandError

__all__ = [
    "KEYED_SNAPSHOT_MANIFEST",
    "KEY_FIELD",
    "REPLY_FIELD",
    "KeyTable",
    "Keyed",
    "key_of",
    "naming_key",
    "snapshot_state",
    "unsettled",
]

KEY_FIELD = "ik"  # event metadata: the idempotency key of the command that wrote the event
REPLY_FIELD = "ir"  # event metadata: that command's encoded reply
KEYED_SNAPSHOT_MANIFEST = "raysource.keyed-snapshot#1"
_MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Keyed:
    """``command`` sent under the idempotency ``key`` (a non-empty string, at most 200
    characters: e.g. a uuid, or an upstream message id). ``trace``: the caller's W3C trace
    context (a :class:`~raysource.runtime.tracing.TraceCarrier`) when tracing is on."""

    command: Any
    key: str
    trace: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled on every send (twice at the caller): the dataclass default for a frozen
        # slots class walks fields() per object (~10% of a caller's CPU in W2)
        if self.trace is None:
            return (Keyed, (self.command, self.key))
        return (Keyed, (self.command, self.key, self.trace))

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or len(self.key) > _MAX_KEY_LENGTH:
            raise ConfigError(
                f"an idempotency key must be a non-empty str of at most "
                f"{_MAX_KEY_LENGTH} characters, got {self.key!r}"
            )


@dataclass(slots=True)
class _Entry:
    at: float  # wall-clock epoch seconds of the application (the event timestamp)
    reply: str | None  # encoded reply (durable entries); None for a rejection
    value: Any = None  # decoded reply / the rejection error, once known in this process
    known: bool = False


class KeyTable:
    """The applied keys of one activation (see the module docstring). Not thread-safe (one
    core, one event loop). ``wall_clock`` returns an aware ``datetime`` (the core's)."""

    def __init__(
        self,
        policy: IdempotencyPolicy,
        serialization: Serialization,
        persistence_id: str,
        wall_clock: Callable[[], datetime],
    ) -> None:
        self.policy = policy
        self.serialization = serialization
        self.persistence_id = persistence_id
        self._clock = wall_clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently applied first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def clear(self) -> None:
        self._entries.clear()

    # ------------------------------------------------------------------ lookups

    def answer(self, key: str) -> tuple[bool, Any, BaseException | None]:
        """``(found, reply, error)`` for ``key``: the original reply, or the original rejection
        as ``error``; ``found`` False if the key is unknown (or aged out)."""
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            return False, None, None
        if entry.reply is None:
            return True, None, entry.value
        if not entry.known:
            ser_id, manifest, payload = _split(entry.reply)
            entry.value = self.serialization.decode(
                ser_id, manifest, payload, persistence_id=self.persistence_id
            )
            entry.known = True
        return True, entry.value, None

    # ------------------------------------------------------------------ recording

    def metadata(self, key: str, reply: Any, sequence_nr: int) -> dict[str, str]:
        """The metadata of the first event of a command applied under ``key`` with ``reply``.
        Raises the serialization's error if the reply cannot be encoded."""
        ser_id, manifest, payload = self.serialization.encode(
            reply, persistence_id=self.persistence_id, sequence_nr=sequence_nr
        )
        return {KEY_FIELD: key, REPLY_FIELD: _join(ser_id, manifest, payload)}

    def applied(self, event: StoredEvent, reply: Any = None, known: bool = False) -> None:
        """Record the key in ``event``'s metadata (written or replayed); ``reply``/``known``:
        the live reply, when this process decided it."""
        key = event.metadata.get(KEY_FIELD) if event.metadata else None
        if key is None:
            return
        self._put(
            key,
            _Entry(event.timestamp.timestamp(), event.metadata.get(REPLY_FIELD, ""), reply, known),
        )

    def rejected(self, key: str, error: BaseException) -> None:
        """Remember a rejection (memory only)."""
        self._put(key, _Entry(self._clock().timestamp(), None, error, True))

    def _put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        limit = self.policy.max_keys
        while limit is not None and len(self._entries) > limit:
            self._entries.popitem(last=False)
        self._expire()

    def _expire(self) -> None:
        age = self.policy.max_age_s
        if age is None:
            return
        oldest = self._clock().timestamp() - age
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.at >= oldest:
                break
            del self._entries[key]

    # ------------------------------------------------------------------ snapshots

    def wrap_snapshot(
        self, ser_id: int, manifest: str, payload: bytes, *, timers: list[list[Any]] | None = None
    ) -> tuple[int, str, bytes]:
        """The snapshot ``(serializer id, manifest, payload)`` of a state, with the durable keys
        and the pending ``timers`` (``raysource.runtime.timers``) in the envelope (unchanged
        when there are neither)."""
        self._expire()
        keys = [[k, e.at, e.reply] for k, e in self._entries.items() if e.reply is not None]
        if not keys and not timers:
            return ser_id, manifest, payload
        body = msgspec.msgpack.encode(
            {"s": [ser_id, manifest, payload], "k": keys, "t": timers or []}
        )
        return JSON_SERIALIZER_ID, KEYED_SNAPSHOT_MANIFEST, body

    def unwrap_snapshot(
        self, snap: StoredSnapshot, *, on_timers: Callable[[list[list[Any]]], None] | None = None
    ) -> tuple[int, str, bytes]:
        """The state's ``(serializer id, manifest, payload)`` of ``snap``; loads the keys of an
        envelope into this (cleared) table and hands its pending timers to ``on_timers``.
        Raises ``CorruptPayloadError`` for a bad one."""
        self.clear()
        body = _open_envelope(snap)
        if body is None:
            return snap.serializer_id, snap.manifest, snap.payload
        for key, at, reply in body.k:
            self._put(key, _Entry(at, reply))
        if on_timers is not None:
            on_timers(body.t)
        return body.s

    def keys(self) -> Iterable[str]:
        """The remembered keys, least recently applied first (for tests and diagnostics)."""
        self._expire()
        return list(self._entries)


# ---------------------------------------------------------------------- the references' rule


def key_of(command: Any) -> str | None:
    """The idempotency key ``command`` is sent under (None: not keyed)."""
    return command.key if isinstance(command, Keyed) else None


def _final_not_applied(err: BaseException) -> bool:
    """Not applied, and re-sending would give the same answer: the command itself failed."""
    return isinstance(err, (HandlerError, UnknownCommandError, SerializationError, ConfigError))


def unsettled(err: BaseException, unknown_seen: bool) -> bool:
    """Keyed: ``err`` leaves the key's outcome open, so the same key is re-sent. After an
    unknown outcome only the command's own answer settles it (a rejection, or a failure of the
    command itself); a store or activation failure of the re-send (``PersistFailedError``,
    ``OverloadedError``, a failed recovery's ``RecoveryFailedError``) says nothing about the
    earlier attempt."""
    if isinstance(err, OutcomeUnknownError):
        return True
    return unknown_seen and not isinstance(err, CommandRejected) and not _final_not_applied(err)


def naming_key(err: BaseException, key: str | None) -> BaseException:
    """``err`` (an outcome-unknown error) with a message that names the idempotency ``key`` to
    re-send with, and the key as ``err.idempotency_key`` (unchanged without a key)."""
    if key is None or getattr(err, "idempotency_key", None) == key:
        return err
    msg = (
        f"{err}; idempotency key {key!r}: the outcome is unknown, re-send the command with "
        f"this key to learn it (it is applied at most once)"
    )
    try:
        out = type(err)(msg)
        out.__cause__ = err
    except Exception:  # an error class with another signature: keep it, add the attribute
        out = err
    try:
        out.idempotency_key = key  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return out


class _Envelope(msgspec.Struct):
    s: tuple[int, str, bytes]
    k: list[tuple[str, float, str]]
    t: list[list[Any]] = []  # pending timers (runtime.timers.Pending.to_list)


def _open_envelope(snap: StoredSnapshot) -> _Envelope | None:
    if snap.manifest != KEYED_SNAPSHOT_MANIFEST:
        return None
    try:
        return msgspec.msgpack.decode(snap.payload, type=_Envelope)
    except msgspec.DecodeError as exc:
        raise CorruptPayloadError(
            f"corrupt keyed snapshot: {exc}",
            persistence_id=snap.persistence_id,
            sequence_nr=snap.sequence_nr,
        ) from exc


def snapshot_state(snap: StoredSnapshot) -> tuple[int, str, bytes]:
    """The ``(serializer id, manifest, payload)`` of the state in ``snap``, keyed envelope or
    not (for tools that decode snapshots, e.g. ``raysource inspect``)."""
    body = _open_envelope(snap)
    return (snap.serializer_id, snap.manifest, snap.payload) if body is None else body.s


def _join(ser_id: int, manifest: str, payload: bytes) -> str:
    return f"{ser_id}|{manifest}|{base64.b64encode(payload).decode('ascii')}"


def _split(encoded: str) -> tuple[int, str, bytes]:
    try:
        ser_id, rest = encoded.split("|", 1)
        manifest, payload = rest.rsplit("|", 1)
        return int(ser_id), manifest, base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise CorruptPayloadError(f"corrupt stored reply {encoded[:60]!r}") from exc
