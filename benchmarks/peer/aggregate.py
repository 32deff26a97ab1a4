"""The raysource side's aggregate of the peer benchmark, the twin of the Pekko program's
(``src/main/java/peerbench/PekkoPeer.java``): ``Add(data)`` persists one ``Added(data)`` event
(typed JSON, 111 bytes with the 100-character payload, like Pekko's Jackson JSON) and replies
the new count. No tags, no snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from raysource.runtime.aggregate import AggregateType, Effect, persist, unknown_command

PAYLOAD = "x" * 100


@dataclass(frozen=True)
class Add:
    data: str


@dataclass(frozen=True)
class Added:
    data: str


@dataclass(frozen=True)
class Counter:
    count: int = 0


def _count(state: Counter) -> int:
    return state.count


def handle(state: Counter, command: object) -> Effect:
    match command:
        case Add(data):
            return persist(Added(data), reply=_count)
        case _:
            unknown_command(command, "peer")


def apply(state: Counter, event: Added) -> Counter:
    return Counter(state.count + 1)


PEER = AggregateType(
    name="peer",
    initial_state=Counter(),
    command_handler=handle,
    event_handler=apply,
    events=(Added,),
    commands=(Add,),
)
