"""The shipped timer store contract (raysource.testing.timer_contract), run on every backend of
the ``backend`` fixture (conftest: in-memory and Cassandra)."""

from raysource.testing.timer_contract import TimerStoreContract


class TestTimerStoreContract(TimerStoreContract):
    """Inherits every check; the parametrized ``backend`` fixture comes from conftest."""
