"""The whole raysource exception tree, written down in one place.

Every error a caller of raysource can see derives from :class:`RaysourceError`. Driver and Ray
errors are wrapped (``raise ... from exc``) so callers never need to import cassandra-driver or
Ray to handle a failure. The tree lives in the bottom layer so every layer can raise and catch it
without importing upwards.

    RaysourceError
    │
    │   two categories callers act on (mixed into the errors below, marked [N] and [U]):
    ├── NotAppliedError                  [N] definitely not applied: safe to re-send as is
    ├── OutcomeUnknownError              [U] may or may not have been applied (or may still
    │                                        land): re-send only if the command is idempotent
    │
    ├── ConfigError                      invalid names, settings, contact points
    │   ├── ShardCountChangedError       a known aggregate type registered with another count
    │   ├── UnknownAggregateTypeError    no aggregate type of that name (lists the known ones)
    │   ├── UnknownEntityError           no event was ever journaled for that entity
    │   └── InvalidRangeError            a sequence-number range that cannot be inspected
    ├── CassandraNodeError               the local Cassandra launcher could not start/stop a node
    ├── JournalError                     anything the event journal / snapshot store reports
    │   ├── ConcurrentWriteError     [N] fencing: another writer holds these sequence numbers
    │   ├── JournalUnavailableError      the store could not be reached: nothing was written
    │   │   └── JournalOutcomeUnknownError [U] sent, unconfirmed: it may or may not land
    │   └── InvalidAppendError    [N]    a malformed append (gaps, mixed ids, empty ids)
    ├── SerializationError               encode/decode failed (names persistence id + seq nr)
    │   ├── UnknownManifestError
    │   ├── MissingUpcasterError
    │   ├── CorruptPayloadError
    │   ├── UnserializableError      [N]
    │   └── PayloadTooLargeError     [N]
    ├── ProjectionError                  a read-side projection could not do what was asked
    ├── ShardingError                    the shard coordinator could not do what was asked
    │   ├── NoLiveNodesError             no live Ray node can take a shard
    │   └── CoordinatorFencedError       another coordinator instance owns the table
    └── CommandError                     a command did not succeed (runtime, sharding)
        ├── CommandRejected              the aggregate said no (domain reason)
        ├── UnknownCommandError      [N] the aggregate type has no handler for this command
        ├── HandlerError             [N] the user's handler raised; state unchanged
        ├── PersistFailedError       [N] the events of this command could not be made durable
        ├── WriteOutcomeUnknownError [U] the write timed out unconfirmed; activation stopped
        ├── AggregateStoppedError    [N] the activation stopped (fenced, passivated) before reply
        │   └── PassivatedError          the host passivated/handed off this aggregate; not applied
        ├── HostCrashedError         [U] the host actor died with the command in flight (unknown)
        └── AskTimeoutError          [U] no reply within the caller's timeout (outcome unknown)
"""

from __future__ import annotations


class RaysourceError(Exception):
    """Root of every error raised by raysource."""


class NotAppliedError(RaysourceError):
    """Category: the operation was definitely not applied (nothing of it is stored, and nothing
    of it can land later). Re-sending it as is is safe.

    ``except NotAppliedError`` catches every such error, whatever its layer."""


class OutcomeUnknownError(RaysourceError):
    """Category: the operation may or may not have been applied, and an unconfirmed write may
    still land later. Re-send only an idempotent command (or read the state first); the next
    activation of the aggregate recovers whatever the journal ends up holding.

    ``except OutcomeUnknownError`` catches every such error, whatever its layer."""


class ConfigError(RaysourceError, ValueError):
    """A configuration value, name or identifier is invalid."""


class ShardCountChangedError(ConfigError):
    """A type's number of shards differs from the one stored for it.

    Entities are routed by ``hash(id) mod number_of_shards``; changing the count of a type that
    has data would route existing entities to other shards, so it is refused.
    """

    def __init__(self, type_name: str, stored: int, requested: int) -> None:
        self.type_name = type_name
        self.stored = stored
        self.requested = requested
        super().__init__(
            f"aggregate type {type_name!r} has {stored} shards; refusing to change it to "
            f"{requested} (the shard count is fixed for the life of the data)"
        )

    def __reduce__(self):
        return (type(self), (self.type_name, self.stored, self.requested))


class UnknownAggregateTypeError(ConfigError):
    """No aggregate type of the requested name is known to the application."""


class UnknownEntityError(ConfigError):
    """The journal holds no event for this entity (it was never created, or the id, type or
    keyspace is misspelt)."""


class InvalidRangeError(ConfigError):
    """A sequence-number range that cannot be inspected (below 1, reversed, or beyond the
    highest sequence number of the entity)."""


class CassandraNodeError(RaysourceError):
    """The local Cassandra node could not be resolved, started, reached or stopped."""


# --------------------------------------------------------------------------- journal


class JournalError(RaysourceError):
    """The event journal or snapshot store failed."""


class ConcurrentWriteError(JournalError, NotAppliedError):
    """Another writer already holds (some of) the sequence numbers of this append.

    Raised by a journal with the fencing guard on. Nothing of the failed append was written.
    The writer that gets it is stale (a duplicate or outdated activation) and must stop.
    """

    def __init__(self, persistence_id: str, sequence_nr: int, message: str | None = None) -> None:
        self.persistence_id = persistence_id
        self.sequence_nr = sequence_nr
        super().__init__(
            message
            or f"concurrent writer on {persistence_id!r}: sequence number {sequence_nr} is taken"
        )

    def __reduce__(self):  # keep fields across pickling (Ray ships errors between processes)
        return (type(self), (self.persistence_id, self.sequence_nr, str(self)))


class JournalUnavailableError(JournalError):
    """The store could not be reached (no node took the request, or a coordinator refused it
    before executing it). Raised as such, it means nothing was written; its subclass
    :class:`JournalOutcomeUnknownError` is the "sent, but unconfirmed" case."""


class JournalOutcomeUnknownError(JournalUnavailableError, OutcomeUnknownError):
    """The store did not confirm a write that was sent (a client or server timeout, a lost
    connection or response, a server error, Cassandra's CAS_WRITE_UNKNOWN): it may or may not
    have been applied, and it may still land later. Callers must re-read before deciding."""


class InvalidAppendError(JournalError, NotAppliedError, ValueError):
    """An append is malformed (empty, mixed persistence ids, non-contiguous sequence numbers)."""


# --------------------------------------------------------------------------- serialization


class SerializationError(RaysourceError):
    """Encoding or decoding an event or snapshot failed.

    ``persistence_id`` and ``sequence_nr`` name the record when known (None otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        persistence_id: str | None = None,
        sequence_nr: int | None = None,
    ) -> None:
        self.persistence_id = persistence_id
        self.sequence_nr = sequence_nr
        self.detail = message
        where = ""
        if persistence_id is not None:
            where = f" [persistence id {persistence_id!r}"
            where += f", sequence number {sequence_nr}]" if sequence_nr is not None else "]"
        super().__init__(message + where)

    def __reduce__(self):
        return (
            _rebuild_serialization_error,
            (type(self), self.detail, self.persistence_id, self.sequence_nr),
        )

    def at(self, persistence_id: str | None, sequence_nr: int | None) -> "SerializationError":
        """A copy of this error that names the record it happened on."""
        err = type(self)(self.detail, persistence_id=persistence_id, sequence_nr=sequence_nr)
        err.__cause__ = self.__cause__
        return err


def _rebuild_serialization_error(cls, detail, persistence_id, sequence_nr):
    return cls(detail, persistence_id=persistence_id, sequence_nr=sequence_nr)


class UnknownManifestError(SerializationError):
    """No type is registered under the stored manifest."""


class MissingUpcasterError(SerializationError):
    """A stored schema version is older than the registered one and no upcaster bridges it."""


class CorruptPayloadError(SerializationError):
    """The stored bytes cannot be decoded into the registered type."""


class UnserializableError(SerializationError, NotAppliedError, TypeError):
    """The object cannot be encoded by the chosen serializer (e.g. unregistered type)."""


class PayloadTooLargeError(SerializationError, NotAppliedError):
    """The encoded payload exceeds the configured size limit; nothing was written."""


# --------------------------------------------------------------------------- read side


class ProjectionError(RaysourceError):
    """A projection (read-side processor) could not be started, controlled or queried."""


# --------------------------------------------------------------------------- sharding


class ShardingError(RaysourceError):
    """The shard coordinator could not do what was asked."""


class NoLiveNodesError(ShardingError):
    """No live node is available to host a shard (the cluster has no alive Ray node)."""


class CoordinatorFencedError(ShardingError):
    """This coordinator instance lost its journal to another instance and stopped serving.

    Raised for every call after its journal reported a ``ConcurrentWriteError``; callers should
    look the coordinator up again (its name now leads to the current instance).
    """


# --------------------------------------------------------------------------- commands


class CommandError(RaysourceError):
    """A command sent to an aggregate did not succeed."""


class CommandRejected(CommandError):
    """The aggregate validated the command against its state and refused it.

    ``reason`` is the domain reason given by the command handler. Nothing was persisted.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class UnknownCommandError(CommandError, NotAppliedError, TypeError):
    """The aggregate type does not handle this command type."""


class HandlerError(CommandError, NotAppliedError):
    """The user's command handler raised; the aggregate is alive and its state unchanged."""


class PersistFailedError(CommandError, NotAppliedError):
    """The events of this command were not stored, and never will be: the journal said the
    write provably did not happen (it never reached the store, or was refused before it was
    executed). The command had no visible effect; re-sending it is safe."""


class WriteOutcomeUnknownError(CommandError, OutcomeUnknownError):
    """The journal did not confirm this command's events (a timeout, a lost response, a
    frozen or restarting store) and a re-read did not find them, or could not be made: they
    may be stored, or may still land. The activation stopped, so the next command recovers the
    truth from the journal (whichever it holds: the command applied once, or not at all).
    Check the state before re-sending a non-idempotent command."""


class AggregateStoppedError(CommandError, NotAppliedError):
    """The activation stopped (fenced by a concurrent writer, or shut down) before replying.

    The command was not applied by this activation; retrying reaches a fresh activation.
    """


class PassivatedError(AggregateStoppedError):
    """The host passivated (idle, evicted, handed off) this aggregate before the command
    reached it. The command was not applied; a retry reaches a fresh activation (references
    re-resolve and re-send transparently)."""


class HostCrashedError(CommandError, OutcomeUnknownError):
    """The actor hosting the aggregate died (crash, ``ray.kill``, lost node) while the command
    was in flight. The outcome is unknown: the command may or may not have been applied, so it
    is not re-sent automatically. The next command reaches a fresh activation that recovers
    every acknowledged event."""


class AskTimeoutError(CommandError, OutcomeUnknownError, TimeoutError):
    """No reply arrived within the caller's timeout. The command may or may not have run."""


__all__ = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, RaysourceError))
