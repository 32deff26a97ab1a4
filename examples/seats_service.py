"""The seat-reservation service: the example aggregate (:mod:`raysource.examples.seats`) and
its read-side view (:mod:`raysource.examples.reservations_view`) behind HTTP.

    PUT    /shows/{show}                     {"seats": 120}            create (size) a show   201
    POST   /shows/{show}/reservations        {"seat": "A1", "customer": "alice"}   reserve   201
    DELETE /shows/{show}/reservations/{seat}?customer=alice              cancel           200
    GET    /shows/{show}                     the show's live state (the aggregate)          200
    GET    /shows/{show}/reservations/{seat} who holds the seat (404 if nobody)             200
    GET    /customers/{customer}/reservations  the customer's reservations (the view)       200
    GET    /healthz                          the replica answering
    GET    /docs, /openapi.json              FastAPI's OpenAPI document and UI

Commands take an optional ``Idempotency-Key`` header (see :mod:`raysource.service.deployment`);
errors follow :mod:`raysource.service.http_errors` (a taken seat is 409, a malformed seat
label 422, a bad show id 400, an unknown outcome 504 with the key).

    app = seats_app(ServiceSpec(...), num_replicas=2)
    url = run_service(app, name="seats", port=8000)

:func:`http_request` is the same mapping from the client's side (the load test's HTTP mode).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, Field

from raysource.examples.reservations_view import reservations_of
from raysource.examples.seats import (
    SHOW,
    CancelReservation,
    CreateShow,
    GetShow,
    ReserveSeat,
    ShowState,
)
from raysource.service.deployment import (
    ServiceContext,
    ServiceSpec,
    idempotency_key,
    service_deployment,
)
from raysource.service.errors import NotFoundError
from raysource.service.http_errors import ERROR_RESPONSES

__all__ = ["SEAT_PATTERN", "build_seats_api", "http_request", "seats_app"]

SEAT_PATTERN = r"^[A-Z]{1,3}([1-9]|10)$"  # a well-formed label (A1 .. A10, B1, ..., AA1, ...)


class NewShow(BaseModel):
    seats: int = Field(ge=1, le=100_000, description="the hall's number of seats", examples=[120])


class NewReservation(BaseModel):
    seat: str = Field(pattern=SEAT_PATTERN, examples=["A1"])
    customer: str = Field(min_length=1, max_length=200, examples=["alice"])


class Reservation(BaseModel):
    show: str
    seat: str
    customer: str


class Show(BaseModel):
    show: str
    seats: int
    created: bool
    available: int
    reservations: dict[str, str] = Field(description="seat label -> customer")


class CustomerSeat(BaseModel):
    show: str
    seat: str


class CustomerReservations(BaseModel):
    customer: str
    reservations: list[CustomerSeat] = Field(
        description="from the read-side view: eventually consistent with the shows"
    )


def build_seats_api(ctx: ServiceContext) -> FastAPI:
    """The FastAPI app of one replica (``ctx`` is the replica's context)."""
    api = FastAPI(
        title="raysource seats",
        version="1",
        description="Seat reservations for shows: commands go to the show "
        "aggregates, customer queries to the read-side view.",
    )
    show_id = Path(min_length=1, max_length=512, description="the show's entity id")
    seat_label = Path(pattern=SEAT_PATTERN)
    agg = ctx.system.aggregate_type(SHOW.name)  # the system's type (e.g. its shard count)

    def show_out(show: str, state: ShowState) -> Show:
        return Show(
            show=show,
            seats=state.seats,
            created=state.created,
            available=state.available,
            reservations=dict(state.reservations),
        )

    @api.put(
        "/shows/{show}",
        status_code=201,
        responses=ERROR_RESPONSES,
        summary="create a show with its number of seats (before any reservation)",
    )
    async def create_show(
        body: NewShow, show: str = show_id, key: str = Depends(idempotency_key)
    ) -> Show:
        await ctx.ask(agg, show, CreateShow(body.seats), idempotency_key=key)
        return show_out(show, await ctx.state(agg, show))

    @api.post(
        "/shows/{show}/reservations",
        status_code=201,
        responses=ERROR_RESPONSES,
        summary="reserve a seat (409 if it is taken or does not exist)",
    )
    async def reserve(
        body: NewReservation, show: str = show_id, key: str = Depends(idempotency_key)
    ) -> Reservation:
        done = await ctx.ask(agg, show, ReserveSeat(body.seat, body.customer), idempotency_key=key)
        return Reservation(show=show, seat=done.seat, customer=done.customer)

    @api.delete(
        "/shows/{show}/reservations/{seat}",
        responses=ERROR_RESPONSES,
        summary="cancel a reservation (only its customer can)",
    )
    async def cancel(
        show: str = show_id,
        seat: str = seat_label,
        customer: str = Query(min_length=1, max_length=200),
        key: str = Depends(idempotency_key),
    ) -> Reservation:
        done = await ctx.ask(agg, show, CancelReservation(seat, customer), idempotency_key=key)
        return Reservation(show=show, seat=done.seat, customer=done.customer)

    @api.get("/shows/{show}", responses=ERROR_RESPONSES, summary="a show's live state")
    async def get_show(show: str = show_id) -> Show:
        return show_out(show, await ctx.ask(agg, show, GetShow()))

    @api.get(
        "/shows/{show}/reservations/{seat}",
        responses={
            **ERROR_RESPONSES,
            404: ERROR_RESPONSES[409] | {"description": "the seat is free (or not in the hall)"},
        },
        summary="who holds a seat",
    )
    async def get_reservation(show: str = show_id, seat: str = seat_label) -> Reservation:
        state: ShowState = await ctx.ask(agg, show, GetShow())
        holder = state.holder(seat)
        if holder is None:
            raise NotFoundError(f"seat {seat} of show {show} is not reserved")
        return Reservation(show=show, seat=seat, customer=holder)

    @api.get(
        "/customers/{customer}/reservations",
        responses=ERROR_RESPONSES,
        summary="a customer's reservations, from the read-side view",
    )
    async def customer_reservations(
        customer: str = Path(min_length=1, max_length=200),
    ) -> CustomerReservations:
        session = await ctx.view_session()
        rows = await reservations_of(session, session.config.keyspace, customer)
        return CustomerReservations(
            customer=customer,
            reservations=[CustomerSeat(show=show, seat=seat) for show, seat in rows],
        )

    @api.get("/healthz", summary="the replica answering")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "replica": ctx.replica, "system": ctx.spec.system}

    return api


def seats_app(spec: ServiceSpec, **deployment_options: Any) -> Any:
    """The Serve application of the seat service (options as for ``service_deployment``)."""
    deployment_options.setdefault("name", "seats")
    return service_deployment(spec, build_seats_api, **deployment_options)


def http_request(
    show: str, command: Any
) -> tuple[str, str, dict[str, Any] | None, dict[str, str] | None]:
    """``(method, path, json body, query)`` of the HTTP request that sends ``command`` to
    ``show`` through this service (ids are percent-encoded by the caller's client)."""
    from urllib.parse import quote

    base = f"/shows/{quote(show, safe='')}"
    match command:
        case ReserveSeat(seat=seat, customer=customer):
            return "POST", f"{base}/reservations", {"seat": seat, "customer": customer}, None
        case CancelReservation(seat=seat, customer=customer):
            return "DELETE", f"{base}/reservations/{quote(seat)}", None, {"customer": customer}
        case GetShow():
            return "GET", base, None, None
        case CreateShow(seats=seats):
            return "PUT", base, {"seats": seats}, None
    raise TypeError(f"the seat service has no endpoint for {type(command).__qualname__}")
