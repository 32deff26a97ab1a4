"""The service API: aggregates and read-side views behind HTTP, on Ray Serve with FastAPI.

Each service owns its data; other services use its HTTP API, never its database. A service is
a Ray Serve deployment whose replicas each join one raysource :class:`System` and answer HTTP by
sending commands through entity references and queries to read-side views:

* :mod:`raysource.service.deployment`: :class:`ServiceSpec` (what a replica joins),
  :class:`ServiceContext` (a replica's system, references, admission limit, view session,
  idempotency-key pass-through), :func:`service_deployment` (the Serve application from a
  FastAPI builder) and :func:`run_service`;
* :mod:`raysource.service.http_errors`: the one table from typed errors to HTTP statuses.

An example service built on it: :mod:`raysource.examples.seats_service` (seat reservations).

Ray Serve and FastAPI come with the ``service`` extra (``pip install raysource[service]``).
"""
