"""The shipped snapshot store contract (raysource.testing.snapshot_contract), run on every
backend of the ``backend`` fixture (conftest: in-memory and Cassandra)."""

from raysource.testing.snapshot_contract import SnapshotContract


class TestSnapshotContract(SnapshotContract):
    """Inherits every check; the parametrized ``backend`` fixture comes from conftest."""
