"""A ledger: the smallest non-idempotent aggregate, for load and failure tests.

Every accepted ``Append(op_id, amount)`` persists one ``Appended`` event — running a command
twice would leave its ``op_id`` twice in the journal, so exactly-once is checkable by counting.
``GetBalance()`` is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysource.runtime.aggregate import (
    AggregateType,
    Effect,
    SnapshotPolicy,
    persist,
    reject,
    reply,
    unknown_command,
)

__all__ = ["LEDGER", "Append", "Appended", "GetBalance", "LedgerState"]


@dataclass(frozen=True)
class Append:
    op_id: str
    amount: int = 1


@dataclass(frozen=True)
class GetBalance:
    pass


@dataclass(frozen=True)
class Appended:
    op_id: str
    amount: int


@dataclass(frozen=True)
class LedgerState:
    balance: int = 0
    count: int = 0


def _handle(state: LedgerState, command: object) -> Effect:
    match command:
        case Append(op_id, amount):
            if amount <= 0:
                return reject(f"amount must be positive, got {amount}")
            return persist(Appended(op_id, amount), reply=lambda s: s.balance)
        case GetBalance():
            return reply(state.balance)
        case _:
            unknown_command(command, "ledger")


def _apply(state: LedgerState, event: Appended) -> LedgerState:
    return LedgerState(state.balance + event.amount, state.count + 1)


LEDGER: AggregateType[LedgerState, object, Appended] = AggregateType(
    name="ledger",
    initial_state=LedgerState(),
    command_handler=_handle,
    event_handler=_apply,
    tagger=lambda _e: ("ledger",),
    snapshot=SnapshotPolicy(every_n_events=500, keep=2),
    events=(Appended,),
    commands=(Append, GetBalance),
    number_of_shards=16,
)
