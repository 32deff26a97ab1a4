"""The timer store: the durable index of pending timers (``raysource.timers.api``), in memory
(``raysource.timers.memory``) and on Cassandra (``raysource.timers.cassandra``)."""

from typing import TYPE_CHECKING

from raysource.journal._lazy import lazy_getattr
from raysource.timers.api import TimerRow, TimerStore, bucket_of

__all__ = ["CassandraTimerStore", "InMemoryTimerStore", "TimerRow", "TimerStore", "bucket_of"]

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from raysource.timers.cassandra import CassandraTimerStore
    from raysource.timers.memory import InMemoryTimerStore

__getattr__ = lazy_getattr(
    __name__,
    {
        "InMemoryTimerStore": "raysource.timers.memory",
        "CassandraTimerStore": "raysource.timers.cassandra",
    },
)
