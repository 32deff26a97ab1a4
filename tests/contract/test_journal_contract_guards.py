"""The shipped journal contract on Cassandra with the per-append guard (the conditional batch of
earlier versions, ``CassandraConfig(guard="per-append")``). ``test_journal_contract.py`` runs
it with the default epoch guard; the unguarded mode ("off") is what both run for
``journal(fencing=False)``."""

import pytest

from raysource.testing.contract_backend import Backend
from raysource.testing.journal_contract import JournalContract

pytestmark = pytest.mark.cassandra


class TestJournalContractPerAppend(JournalContract):
    @pytest.fixture
    def backend(self, cassandra_backend_session) -> Backend:
        shared: Backend = cassandra_backend_session
        return Backend(
            "cassandra",
            shared.session,
            shared.config,
            shared.tag_visibility_delay,
            property_examples=shared.property_examples,
            guard="per-append",
        )

    async def test_guard_in_use(self, backend):
        assert backend.journal().guard == "per-append"
        assert backend.journal(fencing=False).guard == "off"
