"""The whole raysource error tree, in one place.

Every error a caller of raysource can see derives from :class:`RaysourceError`. Driver and Ray
errors are wrapped (``raise ... from exc``) so callers never need to import cassandra-driver or
Ray to handle a failure. Each error is defined in the layer that raises it (the second column
names it when it is not the store layer, ``raysource.journal.errors``); all are importable from
here and from ``raysource``.

    RaysourceError
    │
    │   two categories callers act on (mixed into the errors below, marked [N] and [U]):
    ├── NotAppliedError                  [N] definitely not applied: safe to re-send as is
    ├── OutcomeUnknownError              [U] may or may not have been applied (or may still
    │                                        land): re-send only if the command is idempotent
    │
    ├── ConfigError                      invalid names, settings, contact points
    │   ├── ShardCountChangedError       sharding: a type registered with another shard count
    │   ├── UnknownAggregateTypeError    ops: no aggregate type of that name (lists the known ones)
    │   ├── UnknownEntityError           ops: no event was ever journaled for that entity
    │   ├── InvalidRangeError            ops: a sequence-number range that cannot be inspected
    │   └── MigrationRequiredError       journal: pre-epoch events not migrated (schema migrate)
    ├── CassandraNodeError               devnode: the local Cassandra node could not start/stop
    ├── JournalError                     anything the event journal / snapshot store reports
    │   ├── ConcurrentWriteError     [N] fencing: another writer holds these sequence numbers
    │   ├── JournalUnavailableError      the store could not be reached: nothing was written
    │   │   └── JournalOutcomeUnknownError [U] sent, unconfirmed: it may or may not land
    │   │       └── WriterFencedError  [U] epoch guard: the writer's epoch ended; it stops
    │   └── InvalidAppendError    [N]    a malformed append (gaps, mixed ids, empty ids)
    ├── SerializationError               encode/decode failed (names persistence id + seq nr)
    │   ├── UnknownManifestError
    │   ├── MissingUpcasterError
    │   ├── CorruptPayloadError
    │   ├── UnserializableError      [N]
    │   └── PayloadTooLargeError     [N]
    ├── ProjectionError                  readside: a projection could not do what was asked
    │   └── SwitchRefusedError           a version behind or not verified was not made live
    ├── ShardingError                    sharding: the shard coordinator could not do what was asked
    │   ├── NoLiveNodesError             no live Ray node can take a shard
    │   └── CoordinatorFencedError       another coordinator instance owns the table
    ├── ServiceError                     service: the HTTP front door refused a request itself
    │   ├── NotFoundError                the resource a request names does not exist
    │   └── ReplicaOverloadedError   [N] the replica's in-flight limit (also an OverloadedError)
    └── CommandError                     runtime: a command did not succeed
        ├── CommandRejected              the aggregate said no (domain reason)
        ├── UnknownCommandError      [N] the aggregate type has no handler for this command
        ├── HandlerError             [N] the user's handler raised; state unchanged
        ├── PersistFailedError       [N] the events of this command could not be made durable
        ├── WriteOutcomeUnknownError [U] the write timed out unconfirmed; activation stopped
        ├── RecoveryFailedError      [N] the aggregate could not be recovered (store down, bad data)
        ├── OverloadedError          [N] the mailbox or host in-flight limit: retry later
        ├── AggregateStoppedError    [N] the activation stopped (fenced, passivated) before reply
        │   └── PassivatedError          the host passivated/handed off this aggregate; not applied
        ├── HostCrashedError         [U] the host actor died with the command in flight (unknown)
        └── AskTimeoutError          [U] no reply within the caller's timeout (outcome unknown)

Callers act on the category: ``except NotAppliedError`` (nothing happened: re-send as is) and
``except OutcomeUnknownError`` (it may have happened). With idempotency keys (the default)
references re-send an unknown outcome themselves under the same key until the deadline, so a
caller sees one only when the deadline passed, and it names the key to re-send with
(``err.idempotency_key``); with keys off, re-send only an idempotent command, or read the state
first. A ``CommandRejected`` is the aggregate's answer, not a failure.
"""

from raysource.devnode.errors import *  # noqa: F403
from raysource.devnode.errors import __all__ as _devnode
from raysource.journal.errors import *  # noqa: F403
from raysource.journal.errors import __all__ as _store
from raysource.ops.errors import *  # noqa: F403
from raysource.ops.errors import __all__ as _ops
from raysource.readside.errors import *  # noqa: F403
from raysource.readside.errors import __all__ as _readside
from raysource.runtime.errors import *  # noqa: F403
from raysource.runtime.errors import __all__ as _runtime
from raysource.service.errors import *  # noqa: F403
from raysource.service.errors import __all__ as _service
from raysource.sharding.errors import *  # noqa: F403
from raysource.sharding.errors import __all__ as _sharding

__all__ = sorted({*_store, *_runtime, *_sharding, *_readside, *_devnode, *_ops, *_service})
