"""The shipped journal contract (raysource.testing.journal_contract), run on every backend of
the ``backend`` fixture (conftest: in-memory and Cassandra on the session's real node)."""

from raysource.testing.journal_contract import JournalContract


class TestJournalContract(JournalContract):
    """Inherits every check; the parametrized ``backend`` fixture comes from conftest."""
