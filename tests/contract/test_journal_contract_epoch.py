"""The backend fixture of ``test_journal_contract.py`` runs the default guard: check it is the
epoch guard, so the shipped contract really covers it."""

import pytest

from raysource.testing.contract_backend import Backend

pytestmark = pytest.mark.cassandra


def test_default_contract_backend_uses_the_epoch_guard(cassandra_backend_session):
    shared: Backend = cassandra_backend_session
    backend = Backend("cassandra", shared.session, shared.config)
    assert backend.journal().guard == "epoch"
    assert backend.journal(fencing=False).guard == "off"
