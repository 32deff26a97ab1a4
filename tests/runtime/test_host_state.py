"""``AggregateHost.state``: the read-only view of an aggregate's current state (no Ray)."""

from __future__ import annotations

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.examples.seats import SHOW, ReserveSeat, ShowState
from raysource.journal.errors import ConfigError
from raysource.journal.memory import InMemoryJournal
from raysource.journal.serialization import Serialization
from raysource.runtime.errors import PassivatedError
from raysource.runtime.host import AggregateHost
from raysource.snapshots.memory import InMemorySnapshotStore


def make_host(journal: InMemoryJournal, **kw) -> AggregateHost:
    ser = Serialization()
    SHOW.register_types(ser)
    return AggregateHost(SHOW, journal, InMemorySnapshotStore(), ser, sweep_interval_s=3600, **kw)


async def test_state_activates_recovers_and_writes_nothing():
    journal = InMemoryJournal()
    host = make_host(journal)
    await host.ask("s1", ReserveSeat("A1", "alice"))
    await host.ask("s1", ReserveSeat("B2", "bob"))
    await host.close()

    fresh = make_host(journal)
    state = await fresh.state("s1")  # not active: recovers from the journal
    assert state.reservations == {"A1": "alice", "B2": "bob"}
    assert fresh.active == ["s1"] and not fresh.busy
    assert await fresh.state("new") == ShowState()
    assert [e.sequence_nr for e in journal.events(SHOW.persistence_id("s1"))] == [1, 2]
    assert list(journal.events(SHOW.persistence_id("new"))) == []
    with pytest.raises(ConfigError):
        await fresh.state("")
    await fresh.close()


async def test_state_of_a_retired_entity_is_refused():
    host = make_host(InMemoryJournal(), reactivate=False)
    await host.ask("s1", ReserveSeat("A1", "alice"))
    assert await host.passivate("s1")
    with pytest.raises(PassivatedError):
        await host.state("s1")
    await host.close()
