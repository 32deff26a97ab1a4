"""Seat reservations for a show: the example aggregate of raysource.

One aggregate per show (type name ``"show"``). A show has ``seats`` seats labelled row by row,
ten per row: ``A1 .. A10, B1 .. B10, ...`` (rows after ``Z`` are ``AA``, ``AB``, ...). A show that
was never created has the default hall of 100 seats; ``CreateShow(seats)`` sets another size
before the first reservation.

Rules: a seat cannot be double-booked ("seat A1 is already reserved"), unknown seats are
rejected, and only the customer who holds a reservation can cancel it. ``GetShow()`` is
read-only and never touches the journal.

Holds (durable timers): ``HoldSeat(seat, customer, seconds)`` holds a free seat for a customer
and schedules ``ReleaseHold`` after ``seconds``; ``ConfirmHold`` turns the hold into a
reservation and cancels the timer. A hold that is not confirmed in time is released by the
timer, even if the show was passivated or its node lost meanwhile.

Personal data (crypto-shredding, :mod:`raysource.journal.personal`): a reservation may carry
the customer's ``name`` and a ``guest`` with their ``guest_name``. Both names are personal
fields sealed under the key of their own subject (``customer`` and ``guest``, pseudonymous ids
stored in clear); after ``forget(subject)`` they read as ``"<forgotten>"``. The state keeps
them per seat in ``attendees`` (so snapshots hold them sealed too).

    from raysource.journal.serialization import Serialization
    ser = Serialization()
    SHOW.register_types(ser)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from raysource.journal.personal import Personal
from raysource.runtime.aggregate import (
    AggregateType,
    Effect,
    SnapshotPolicy,
    none,
    persist,
    reject,
    reply,
    schedule,
    unknown_command,
)

__all__ = [
    "SHOW",
    "Attendees",
    "CancelReservation",
    "ConfirmHold",
    "CreateShow",
    "GetShow",
    "HoldReleased",
    "HoldSeat",
    "ReleaseHold",
    "SeatHeld",
    "ReservationCancelled",
    "ReserveSeat",
    "SeatReserved",
    "ShowCreated",
    "ShowState",
    "seat_label",
    "seat_index",
]

DEFAULT_SEATS = 100
SEATS_PER_ROW = 10


# --------------------------------------------------------------------------- seat labels


def _row_label(row: int) -> str:
    label = ""
    row += 1
    while row:
        row, rem = divmod(row - 1, 26)
        label = chr(ord("A") + rem) + label
    return label


def seat_label(index: int) -> str:
    """0 -> "A1", 9 -> "A10", 10 -> "B1", 260 -> "AA1"."""
    row, col = divmod(index, SEATS_PER_ROW)
    return f"{_row_label(row)}{col + 1}"


def seat_index(label: str) -> int | None:
    """The 0-based index of a seat label, or None if it is not a well-formed label."""
    letters = label.rstrip("0123456789")
    digits = label[len(letters) :]
    if not letters or not digits or not letters.isascii() or not letters.isupper():
        return None
    if not letters.isalpha() or digits.startswith("0"):
        return None
    col = int(digits)
    if not 1 <= col <= SEATS_PER_ROW:
        return None
    row = 0
    for ch in letters:
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return (row - 1) * SEATS_PER_ROW + col - 1


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class CreateShow:
    """Size the hall (only before the first reservation, and only once)."""

    seats: int


@dataclass(frozen=True)
class ReserveSeat:
    seat: str
    customer: str
    name: str = ""  # the customer's name (personal)
    guest: str = ""  # the id of the person who will sit there, if not the customer
    guest_name: str = ""  # their name (personal)


@dataclass(frozen=True)
class CancelReservation:
    seat: str
    customer: str


@dataclass(frozen=True)
class HoldSeat:
    """Hold a free seat for ``customer``; released after ``seconds`` unless confirmed."""

    seat: str
    customer: str
    seconds: float = 600.0


@dataclass(frozen=True)
class ConfirmHold:
    """Turn the customer's hold into a reservation (and cancel its release timer)."""

    seat: str
    customer: str


@dataclass(frozen=True)
class ReleaseHold:
    """Release the customer's hold (sent by the hold's timer; a no-op if it is gone)."""

    seat: str
    customer: str


@dataclass(frozen=True)
class GetShow:
    """Read-only: replies the current :class:`ShowState`."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class ShowCreated:
    """The show was created with ``seats`` seats."""

    seats: int


@dataclass(frozen=True)
class SeatReserved:
    """The seat was reserved by the customer ("seat A1 was reserved by Alice"), optionally
    with the customer's name and a guest (two data subjects, each name under its own key)."""

    seat: str
    customer: str
    name: Annotated[str, Personal("customer")] = ""
    guest: str = ""
    guest_name: Annotated[str, Personal("guest")] = ""


@dataclass(frozen=True)
class ReservationCancelled:
    """The customer cancelled their reservation of the seat."""

    seat: str
    customer: str


@dataclass(frozen=True)
class SeatHeld:
    """The seat is held for the customer until ``seconds`` after this event."""

    seat: str
    customer: str
    seconds: float


@dataclass(frozen=True)
class HoldReleased:
    """The customer's hold of the seat ended without a reservation."""

    seat: str
    customer: str


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Attendees:
    """Who a named reservation is for (personal fields, sealed in snapshots too)."""

    customer: str
    name: Annotated[str, Personal("customer")] = ""
    guest: str = ""
    guest_name: Annotated[str, Personal("guest")] = ""


@dataclass(frozen=True)
class ShowState:
    """``reservations`` maps seat label -> customer. Treat it as immutable: the event handler
    builds a new dict for every change."""

    seats: int = DEFAULT_SEATS
    created: bool = False
    reservations: dict[str, str] = field(default_factory=dict)
    holds: dict[str, str] = field(default_factory=dict)  # seat -> customer
    attendees: dict[str, Attendees] = field(default_factory=dict)  # named reservations

    def holder(self, seat: str) -> str | None:
        return self.reservations.get(seat)

    def is_seat(self, seat: str) -> bool:
        idx = seat_index(seat)
        return idx is not None and idx < self.seats

    @property
    def available(self) -> int:
        return self.seats - len(self.reservations) - len(self.holds)


# --------------------------------------------------------------------------- behaviour


def handle_command(state: ShowState, command: object) -> Effect:
    match command:
        case ReserveSeat(seat=seat, customer=customer, name=name, guest=g, guest_name=g_name):
            if not customer:
                return reject("a reservation needs a customer")
            if g_name and not g:
                return reject("a guest's name needs the guest's id")
            if not state.is_seat(seat):
                return reject(f"seat {seat} does not exist")
            holder = state.holder(seat)
            if holder is not None:
                return reject(f"seat {seat} is already reserved")
            if seat in state.holds:
                return reject(f"seat {seat} is held")
            reserved = SeatReserved(seat, customer, name, g, g_name)
            return persist(reserved, reply=reserved)
        case HoldSeat(seat=seat, customer=customer, seconds=seconds):
            if not customer:
                return reject("a hold needs a customer")
            if not state.is_seat(seat):
                return reject(f"seat {seat} does not exist")
            if state.holder(seat) is not None or seat in state.holds:
                return reject(f"seat {seat} is not free")
            if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86_400:
                return reject(f"a hold lasts 0 to 86400 seconds, got {seconds!r}")
            event = SeatHeld(seat, customer, float(seconds))
            return persist(
                event,
                reply=event,
                schedule=schedule(
                    f"hold-{seat}", ReleaseHold(seat, customer), after=float(seconds)
                ),
            )
        case ConfirmHold(seat=seat, customer=customer):
            if state.holds.get(seat) != customer:
                return reject(f"seat {seat} is not held by {customer}")
            reserved = SeatReserved(seat, customer)
            return persist(reserved, reply=reserved, cancel=f"hold-{seat}")
        case ReleaseHold(seat=seat, customer=customer):
            if state.holds.get(seat) != customer:
                return none()  # confirmed, or released already
            released = HoldReleased(seat, customer)
            return persist(released, reply=released, cancel=f"hold-{seat}")
        case CancelReservation(seat=seat, customer=customer):
            if not state.is_seat(seat):
                return reject(f"seat {seat} does not exist")
            holder = state.holder(seat)
            if holder is None:
                return reject(f"seat {seat} is not reserved")
            if holder != customer:
                return reject(f"seat {seat} is not reserved by {customer}")
            cancelled = ReservationCancelled(seat, customer)
            return persist(cancelled, reply=cancelled)
        case GetShow():
            return reply(state)
        case CreateShow(seats=seats):
            if state.created:
                return reject("the show already exists")
            if state.reservations:
                return reject("the show already has reservations")
            if not isinstance(seats, int) or seats < 1:
                return reject(f"a show needs at least one seat, got {seats!r}")
            return persist(ShowCreated(seats), reply=ShowCreated(seats))
        case _:
            unknown_command(command, "show")


def apply_event(state: ShowState, event: object) -> ShowState:
    seats, created, reservations, holds, attendees = (
        state.seats,
        state.created,
        state.reservations,
        state.holds,
        state.attendees,
    )
    match event:
        case SeatReserved(seat=seat, customer=customer):  # also confirms a hold
            holds = {s: c for s, c in holds.items() if s != seat}
            reservations = {**reservations, seat: customer}
            if event.name or event.guest or event.guest_name:
                who = Attendees(customer, event.name, event.guest, event.guest_name)
                attendees = {**attendees, seat: who}
        case ReservationCancelled(seat=seat):
            reservations = {s: c for s, c in reservations.items() if s != seat}
            attendees = {s: a for s, a in attendees.items() if s != seat}
        case ShowCreated(seats=n):
            seats, created = n, True
        case SeatHeld(seat=seat, customer=customer):
            holds = {**holds, seat: customer}
        case HoldReleased(seat=seat):
            holds = {s: c for s, c in holds.items() if s != seat}
        case _:
            raise TypeError(f"unknown event {type(event).__qualname__}")
    return ShowState(seats, created, reservations, holds, attendees)


def tags(event: object) -> frozenset[str]:
    return frozenset({"show"})


SHOW: AggregateType[ShowState, object, object] = AggregateType(
    name="show",
    initial_state=ShowState(),
    command_handler=handle_command,
    event_handler=apply_event,
    tagger=tags,
    snapshot=SnapshotPolicy(every_n_events=100, keep=2),
    events=(ShowCreated, SeatReserved, ReservationCancelled, SeatHeld, HoldReleased),
    commands=(
        CreateShow,
        ReserveSeat,
        CancelReservation,
        GetShow,
        HoldSeat,
        ConfirmHold,
        ReleaseHold,
    ),
    types=(ShowState, Attendees),
)
