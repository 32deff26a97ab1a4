"""The aggregate API: how a user declares an event-sourced aggregate type.

Pure Python. This module imports neither Ray nor cassandra-driver nor any journal backend, so a
domain model is plain code, testable in microseconds.

An aggregate type is a value (:class:`AggregateType`) made of:

* a type ``name`` (part of every persistence id: ``"<name>|<entity id>"``),
* an ``initial_state``,
* a ``command_handler(state, command) -> Effect`` that validates a command against the current
  state and says what to do (see the effect builders below),
* a pure ``event_handler(state, event) -> state`` (the only way state changes; it is re-run on
  recovery, so it must not have side effects or fail on stored events),
* an optional ``tagger(event) -> frozenset[str]`` for the read side, and a :class:`SnapshotPolicy`.

Effects (build them with the functions, match on the classes)::

    persist(*events, reply=..., then=(...,))  # store events atomically, then reply
    persist(*events, schedule=schedule("expire", Expire(), after=600), cancel="remind")
                                               # + durable timers (raysource.runtime.timers)
    reply(value)                               # answer without touching the journal (queries)
    reject("seat A1 is already reserved")      # CommandRejected(reason) at the caller
    none()                                     # no-op, reply None

Commands, events and state are frozen dataclasses; :meth:`AggregateType.register_types`
registers them with a :class:`raysource.journal.serialization.Serialization`.

A handler signals "I do not handle this command" by raising :class:`UnknownCommandError`,
most simply via :func:`unknown_command` in the ``case _:`` arm of a ``match``. Any other
:class:`CommandError` a handler raises reaches the caller unchanged; any other exception becomes
a :class:`HandlerError`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar

from raysource.journal.errors import ConfigError
from raysource.journal.retention import (
    KEEP_ALL,
    KeepFromSnapshot,
    KeepUntilFinal,
    RetentionPolicy,
)
from raysource.journal.roundtrip import pin_annotations
from raysource.runtime.errors import UnknownCommandError

if TYPE_CHECKING:  # only for annotations: keep the module free of serializer imports at runtime
    from raysource.journal.serialization import Serialization

__all__ = [
    "AggregateType",
    "Effect",
    "IdempotencyPolicy",
    "NoOp",
    "PERSISTENCE_ID_SEPARATOR",
    "Persist",
    "Placement",
    "Reject",
    "Reply",
    "SnapshotPolicy",
    "none",
    "persist",
    "reject",
    "reply",
    "split_persistence_id",
    "unknown_command",
    "validate_entity_id",
]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")

Placement = Literal["dedicated", "hosted"]

PERSISTENCE_ID_SEPARATOR = "|"
MAX_ENTITY_ID_LENGTH = 512
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_MAX_NAME_LENGTH = 100


# --------------------------------------------------------------------------- effects


class Effect:
    """What a command handler decided. One of :class:`Persist`, :class:`Reply`,
    :class:`Reject`, :class:`NoOp`."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Persist(Effect):
    """Store ``events`` as one atomic group, apply them to the state, then reply.

    ``reply`` is either a value or a callable ``(new_state) -> value`` evaluated on the state
    after these events. ``then`` callables ``(new_state) -> None`` run only after the events
    are durable (never when the write fails); an awaitable they return is scheduled, and their
    exceptions are logged, not reported to the caller.
    """

    events: tuple[Any, ...]
    reply: Any = None
    then: tuple[Callable[[Any], Any], ...] = ()
    schedule: tuple[Schedule, ...] = ()
    cancel: tuple[str, ...] = ()

    def reply_for(self, new_state: Any) -> Any:
        """The reply value for the state after this effect's events."""
        r = self.reply
        if callable(r) and not isinstance(r, type):
            return r(new_state)
        return r


@dataclass(frozen=True, slots=True)
class Reply(Effect):
    """Answer ``value`` without persisting anything (read-only commands never hit the journal)."""

    value: Any = None


@dataclass(frozen=True, slots=True)
class Reject(Effect):
    """Refuse the command; the caller gets ``CommandRejected(reason)``. Nothing is persisted."""

    reason: str


@dataclass(frozen=True, slots=True)
class NoOp(Effect):
    """Do nothing; the caller gets ``None``."""


_NONE = NoOp()


def persist(
    *events: Any,
    reply: Any = None,
    then: Callable[[Any], Any] | Iterable[Callable[[Any], Any]] = (),
    schedule: Schedule | Iterable[Schedule] = (),
    cancel: str | Iterable[str] = (),
) -> Persist:
    """Persist ``events`` atomically, then reply ``reply`` (a value or ``(new_state) -> value``).

    ``then`` is one callable or several, each called with the new state once durable.
    ``schedule``: one :class:`Schedule` or several (durable timers: the aggregate receives the
    timer's command at its due time, even if passivated or its node is lost); ``cancel``: the
    name of a pending timer, or several, that must never fire. Both are stored in the same
    atomic append as ``events`` (so at least one event is required: ``ConfigError``); a
    schedule under the name of a pending timer replaces it. Cancel first, then schedule.
    """
    thens = (then,) if callable(then) else tuple(then)
    schedules = (schedule,) if isinstance(schedule, Schedule) else tuple(schedule)
    cancels = (cancel,) if isinstance(cancel, str) else tuple(cancel)
    if not all(isinstance(s, Schedule) for s in schedules):
        raise ConfigError(f"schedule= takes Schedule values (see schedule()), got {schedules!r}")
    names = [s.name for s in schedules]
    if len(set(names)) < len(names):  # one id per name and event: which one would fire?
        raise ConfigError(f"one persist schedules a timer name twice: {names!r}")
    for name in cancels:
        _check_timer_name(name)
    if (schedules or cancels) and not events:
        raise ConfigError(
            "a schedule or cancel is journaled with the events of its command: "
            "persist at least one event with it"
        )
    return Persist(tuple(events), reply, thens, schedules, cancels)


# --------------------------------------------------------------------------- durable timers

_MAX_TIMER_NAME = 200
_MAX_AFTER_S = 1000 * 365 * 86_400.0  # beyond it a due time leaves datetime's range


def _check_timer_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > _MAX_TIMER_NAME:
        raise ConfigError(
            f"a timer name must be a non-empty str of at most {_MAX_TIMER_NAME} "
            f"characters, got {name!r}"
        )
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """A durable timer: deliver ``command`` to this aggregate at ``at`` (an aware datetime)
    or ``after_s`` seconds after the events that schedule it. One pending timer per ``name``
    and aggregate. Build with :func:`schedule`."""

    name: str
    command: Any
    after_s: float | None = None
    at: datetime | None = None

    def __post_init__(self) -> None:
        _check_timer_name(self.name)
        if (self.after_s is None) == (self.at is None):
            raise ConfigError(f"timer {self.name!r}: give exactly one of after= or at=")
        if self.after_s is not None and (
            isinstance(self.after_s, bool)
            or not isinstance(self.after_s, (int, float))
            or not 0 <= self.after_s <= _MAX_AFTER_S
        ):  # NaN too
            raise ConfigError(
                f"timer {self.name!r}: after= must be a number of seconds from 0 "
                f"to {_MAX_AFTER_S:.0f} (1000 years), got {self.after_s!r}"
            )
        if self.at is not None and (not isinstance(self.at, datetime) or self.at.tzinfo is None):
            raise ConfigError(
                f"timer {self.name!r}: at= must be a timezone-aware datetime, got {self.at!r}"
            )

    def due(self, now: datetime) -> datetime:
        """The due time when scheduled at ``now`` (the events' timestamp)."""
        if self.at is not None:
            return self.at
        return now + timedelta(seconds=float(self.after_s or 0.0))


def schedule(
    name: str, command: Any, *, after: float | None = None, at: datetime | None = None
) -> Schedule:
    """A durable timer named ``name`` that sends ``command`` (a command of this aggregate
    type) to this aggregate ``after`` seconds from now or ``at`` a time; pass it to
    ``persist(..., schedule=...)``."""
    return Schedule(name, command, after, at)


def reply(value: Any = None) -> Reply:
    """Reply ``value`` without persisting."""
    return Reply(value)


def reject(reason: str) -> Reject:
    """Reject the command with a domain ``reason`` (``CommandRejected`` at the caller)."""
    return Reject(str(reason))


def none() -> NoOp:
    """A no-op effect (reply ``None``)."""
    return _NONE


def unknown_command(command: Any, aggregate: str | None = None) -> NoReturn:
    """Raise :class:`UnknownCommandError` for ``command`` (use in a ``case _:`` arm)."""
    where = f" for aggregate type {aggregate!r}" if aggregate else ""
    raise UnknownCommandError(f"unknown command {type(command).__qualname__}{where}")


# --------------------------------------------------------------------------- snapshot policy


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to snapshot: every ``every_n_events`` events (a multiple of N is crossed by a
    write) and/or when ``predicate(state_after_event, event)`` is true for an event of a write.
    After a snapshot the store keeps the newest ``keep`` snapshots. Both triggers None: never.
    """

    every_n_events: int | None = None
    predicate: Callable[[Any, Any], bool] | None = None
    keep: int = 2

    def __post_init__(self) -> None:
        if self.every_n_events is not None and (
            not isinstance(self.every_n_events, int) or self.every_n_events < 1
        ):
            raise ConfigError(f"every_n_events must be an int >= 1, got {self.every_n_events!r}")
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"keep must be an int >= 1, got {self.keep!r}")

    @property
    def enabled(self) -> bool:
        return self.every_n_events is not None or self.predicate is not None

    def crossed(self, old_sequence_nr: int, new_sequence_nr: int) -> bool:
        """True if a write from ``old`` to ``new`` crosses a multiple of ``every_n_events``."""
        n = self.every_n_events
        return n is not None and old_sequence_nr // n != new_sequence_nr // n


NO_SNAPSHOTS = SnapshotPolicy()


# --------------------------------------------------------------------------- idempotency


@dataclass(frozen=True, slots=True)
class IdempotencyPolicy:
    """Idempotency keys of an aggregate type (see ``raysource.runtime.idempotency``).

    ``enabled`` (default True): references send every command under a key (one per logical
    send, or the caller's) and re-send outcome-unknown failures under the same key until the
    call's deadline; the aggregate applies a key at most once and answers a repeat with the
    original reply (or rejection), writing nothing. Off: keys are refused at the reference and
    ignored by the core (outcome-unknown failures reach the caller, as before).

    Retention, per activation: the newest ``max_keys`` applied keys (default 1,000), and only
    keys applied within ``max_age_s`` seconds (default None: no age limit). A key beyond the
    window is forgotten: sending it again applies the command again. Choose the window to
    cover the longest redelivery of your callers (a queue's redelivery, a client's retries).
    Memory: roughly (key + encoded reply + ~100 bytes) per remembered key per active
    aggregate; snapshots carry the durable keys too.
    """

    enabled: bool = True
    max_keys: int | None = 1_000
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_keys is not None and (not isinstance(self.max_keys, int) or self.max_keys < 1):
            raise ConfigError(f"max_keys must be an int >= 1 or None, got {self.max_keys!r}")
        if self.max_age_s is not None and (
            not isinstance(self.max_age_s, (int, float)) or self.max_age_s <= 0
        ):
            raise ConfigError(f"max_age_s must be > 0 or None, got {self.max_age_s!r}")
        if self.enabled and self.max_keys is None and self.max_age_s is None:
            raise ConfigError("idempotency keys need a bound: max_keys and/or max_age_s")


NO_IDEMPOTENCY = IdempotencyPolicy(enabled=False)


# --------------------------------------------------------------------------- aggregate type


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > _MAX_NAME_LENGTH:
        raise ConfigError(
            f"invalid aggregate type name {name!r}: must match [A-Za-z][A-Za-z0-9_-]* "
            f"(at most {_MAX_NAME_LENGTH} characters)"
        )
    return name


def validate_entity_id(entity_id: str) -> str:
    """Return ``entity_id`` if valid: a non-empty str of at most 512 characters without control
    characters that UTF-8 can encode (no lone surrogates); else raise :class:`ConfigError`."""
    if not isinstance(entity_id, str) or not entity_id:
        raise ConfigError(f"entity id must be a non-empty string, got {entity_id!r}")
    if len(entity_id) > MAX_ENTITY_ID_LENGTH:
        raise ConfigError(
            f"entity id is {len(entity_id)} characters long, over the limit of "
            f"{MAX_ENTITY_ID_LENGTH}"
        )
    if entity_id.isascii() and entity_id.isprintable():  # the common case, checked per call
        return entity_id
    if any(unicodedata.category(ch) == "Cc" for ch in entity_id):
        raise ConfigError(f"entity id {entity_id!r} contains control characters")
    try:
        entity_id.encode("utf-8")  # the shard hash, the journal and Ray all need UTF-8
    except UnicodeEncodeError:
        raise ConfigError(
            f"entity id {entity_id!r} is not valid Unicode text (a lone surrogate)"
        ) from None
    return entity_id


def split_persistence_id(persistence_id: str) -> tuple[str, str]:
    """``"show|42"`` -> ``("show", "42")`` (type names never contain the separator)."""
    name, sep, entity_id = persistence_id.partition(PERSISTENCE_ID_SEPARATOR)
    if not sep:
        raise ConfigError(f"not a persistence id: {persistence_id!r}")
    return name, entity_id


@dataclass(frozen=True, eq=False)
class AggregateType(Generic[S, C, E]):
    """The declaration of one aggregate type. Immutable; share it freely (also across Ray
    processes: it is pickled with the host actor, so handlers should be module-level functions).

    ``events``, ``commands`` and ``types`` (state and reply classes, nested dataclasses) are the
    classes :meth:`register_types` registers with the serializer under the stable manifest names
    ``"<name>.<QualName>"``. The type of ``initial_state`` is registered too when it is a
    dataclass.

    Compared and hashed by identity (handlers are not comparable); use ``name`` as a key.

    ``idempotency``: keys on commands and their retention (:class:`IdempotencyPolicy`).
    ``retention``: which events a cleaner may delete
    (:class:`~raysource.journal.retention.RetentionPolicy`; default: keep everything).

    ``placement``: ``"dedicated"`` (one Ray actor per aggregate) or ``"hosted"`` (many per
    actor); ``idle_timeout_s``: passivation after this much inactivity; ``number_of_shards``:
    fixed for the life of the data.
    """

    name: str
    initial_state: S
    command_handler: Callable[[S, C], Effect]
    event_handler: Callable[[S, E], S]
    tagger: Callable[[E], Iterable[str]] | None = None
    snapshot: SnapshotPolicy = NO_SNAPSHOTS
    events: tuple[type, ...] = ()
    commands: tuple[type, ...] = ()
    types: tuple[type, ...] = ()
    placement: Placement = "dedicated"
    idle_timeout_s: float = 120.0
    number_of_shards: int = 32
    idempotency: IdempotencyPolicy = IdempotencyPolicy()
    retention: RetentionPolicy = KEEP_ALL

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.retention, RetentionPolicy):
            raise ConfigError(f"{self.name}: retention must be a RetentionPolicy")
        if (
            isinstance(self.retention, KeepFromSnapshot)
            and isinstance(self.snapshot, SnapshotPolicy)
            and self.retention.k > self.snapshot.keep
        ):
            raise ConfigError(
                f"{self.name}: retention keeps events from snapshot number {self.retention.k} "
                f"(newest first) but the snapshot policy keeps only {self.snapshot.keep}"
            )
        if (
            isinstance(self.retention, KeepUntilFinal)
            and isinstance(self.snapshot, SnapshotPolicy)
            and not self.snapshot.enabled
        ):
            raise ConfigError(
                f"{self.name}: retention deletes history up to a snapshot taken at or after a "
                "final event, but the type takes no snapshots (e.g. SnapshotPolicy(predicate="
                "lambda state, event: isinstance(event, Closed)))"
            )
        if not isinstance(self.idempotency, IdempotencyPolicy):
            raise ConfigError(f"{self.name}: idempotency must be an IdempotencyPolicy")
        if not callable(self.command_handler) or not callable(self.event_handler):
            raise ConfigError(f"{self.name}: command_handler and event_handler must be callable")
        if self.tagger is not None and not callable(self.tagger):
            raise ConfigError(f"{self.name}: tagger must be callable")
        if not isinstance(self.snapshot, SnapshotPolicy):
            raise ConfigError(f"{self.name}: snapshot must be a SnapshotPolicy")
        if self.placement not in ("dedicated", "hosted"):
            raise ConfigError(
                f"{self.name}: placement must be 'dedicated' or 'hosted', got {self.placement!r}"
            )
        if not isinstance(self.idle_timeout_s, (int, float)) or self.idle_timeout_s <= 0:
            raise ConfigError(f"{self.name}: idle_timeout_s must be > 0")
        if not isinstance(self.number_of_shards, int) or self.number_of_shards < 1:
            raise ConfigError(f"{self.name}: number_of_shards must be an int >= 1")
        for group in ("events", "commands", "types"):
            classes = tuple(getattr(self, group))
            if not all(isinstance(c, type) for c in classes):
                raise ConfigError(f"{self.name}: {group} must be classes")
            object.__setattr__(self, group, classes)
        for cls in self.all_types():  # string annotations must resolve in other processes too
            pin_annotations(cls)

    # ------------------------------------------------------------------ identity

    def persistence_id(self, entity_id: str) -> str:
        """``"<name>|<entity_id>"`` after validating the entity id (``ConfigError``)."""
        return f"{self.name}{PERSISTENCE_ID_SEPARATOR}{validate_entity_id(entity_id)}"

    # ------------------------------------------------------------------ behaviour

    def tags_for(self, event: E) -> frozenset[str]:
        """The read-side tags of ``event`` (empty without a tagger)."""
        if self.tagger is None:
            return frozenset()
        return frozenset(self.tagger(event))

    def apply(self, state: S, events: Iterable[E]) -> S:
        """Fold ``events`` into ``state`` with the event handler."""
        for event in events:
            state = self.event_handler(state, event)
        return state

    # ------------------------------------------------------------------ serialization

    def all_types(self) -> tuple[type, ...]:
        """Every class this aggregate stores or exchanges (deduplicated, declaration order)."""
        classes: list[type] = [*self.events, *self.commands, *self.types]
        state_cls = type(self.initial_state)
        if dataclasses.is_dataclass(state_cls):
            classes.append(state_cls)
        return tuple(dict.fromkeys(classes))

    def register_types(self, serialization: Serialization) -> None:
        """Register :meth:`all_types` with ``serialization`` as ``"<name>.<QualName>"``.

        Classes already registered (e.g. under a name of the user's choosing, or shared with
        another aggregate type) are left as they are. Idempotent.
        """
        for cls in self.all_types():
            if not serialization.is_registered(cls):
                serialization.register(cls, f"{self.name}.{cls.__qualname__}")
