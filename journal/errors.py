"""The errors of the store layer, and the root of raysource's one error tree.

Defined here: :class:`RaysourceError` (the root), the two categories callers act on
(:class:`NotAppliedError`, :class:`OutcomeUnknownError`), :class:`ConfigError`, the journal's and
the serializer's errors. Every other layer defines its errors where it raises them
(``raysource.runtime.errors``, ``raysource.sharding.errors``, ``raysource.readside.errors``,
``raysource.devnode.errors``, ``raysource.ops.errors``, ``raysource.service.errors``);
:mod:`raysource.errors` gathers the whole tree and documents it.
"""

from __future__ import annotations

from typing import Any


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


class MigrationRequiredError(ConfigError):
    """The keyspace holds events of a version before the epoch key (``messages``) that were
    not migrated: run ``raysource schema migrate`` first (else they would be invisible)."""


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

    # keep fields across pickling (Ray ships errors between processes)
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.persistence_id, self.sequence_nr, str(self)))


class JournalUnavailableError(JournalError):
    """The store could not be reached (no node took the request, or a coordinator refused it
    before executing it). Raised as such, it means nothing was written; its subclass
    :class:`JournalOutcomeUnknownError` is the "sent, but unconfirmed" case."""


class JournalOutcomeUnknownError(JournalUnavailableError, OutcomeUnknownError):
    """The store did not confirm a write that was sent (a client or server timeout, a lost
    connection or response, a server error, Cassandra's CAS_WRITE_UNKNOWN): it may or may not
    have been applied, and it may still land later. Callers must re-read before deciding."""


class WriterFencedError(JournalOutcomeUnknownError):
    """The writer's epoch ended (epoch guard): a newer activation claimed the persistence id,
    or one of this writer's writes (events, fence read, tag rows) was not confirmed.

    The append's outcome is unknown — never "not applied": the newer activation may have
    recovered its events — and the writer must stop; nothing it appends any more can be
    acknowledged. The next activation recovers whatever the valid log holds."""


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_serialization_error,
            (type(self), self.detail, self.persistence_id, self.sequence_nr),
        )

    def at(self, persistence_id: str | None, sequence_nr: int | None) -> SerializationError:
        """A copy of this error that names the record it happened on."""
        err = type(self)(self.detail, persistence_id=persistence_id, sequence_nr=sequence_nr)
        err.__cause__ = self.__cause__
        return err


def _rebuild_serialization_error(
    cls: type[SerializationError], detail: str, persistence_id: str | None, sequence_nr: int | None
) -> SerializationError:
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


# Written out so type checkers see the names ``raysource.errors`` re-exports;
# tests/project/test_rooms.py
# checks it lists every error class of this module.
__all__ = [
    "ConcurrentWriteError",
    "ConfigError",
    "CorruptPayloadError",
    "InvalidAppendError",
    "JournalError",
    "JournalOutcomeUnknownError",
    "JournalUnavailableError",
    "MigrationRequiredError",
    "MissingUpcasterError",
    "NotAppliedError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "RaysourceError",
    "SerializationError",
    "UnknownManifestError",
    "UnserializableError",
    "WriterFencedError",
]
