"""Example applications: seat reservations (the aggregate ``seats``, its read-side view
``reservations_view`` and its HTTP service ``seats_service`` on :mod:`raysource.service`) and
a ledger."""
