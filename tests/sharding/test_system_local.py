"""The System on one local Ray node: passivation and the per-node cap through the sharding
layer (region + resolver), both placements. Multi-node behaviour: test_sharding_cluster.py."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from raysource.examples.ledger import LEDGER, Append, GetBalance
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.timeout(120)]


def _system(contact, keyspace, **kw) -> System:
    host, port = contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=keyspace)
    return System.start(
        f"loc{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[LEDGER],
        **kw,
    )


def _live_actors(system) -> set[str]:  # noqa: ANN001
    return {
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["name"].startswith(f"{system.name}:ledger|")
    }


def _poll(condition, what: str, polls: int = 1200) -> None:  # noqa: ANN001
    """Until ``condition()``; the budget is a number of polls (0.1 s apart), not a deadline
    tuned to a quiet machine."""
    for _ in range(polls):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(what)


@pytest.mark.parametrize("placement", ["dedicated", "hosted"])
def test_idle_passivation_and_reactivation_through_the_system(
    cassandra_contact, cassandra_keyspace, ray_local, placement
) -> None:
    system = _system(
        cassandra_contact,
        cassandra_keyspace,
        placement={"ledger": placement},
        host_settings={"ledger": {"idle_timeout_s": 0.5, "retire_grace_s": 0.2}},
    )
    try:
        ref = system.entity(LEDGER, f"idle-{placement}")
        assert ref.ask(Append("a"), timeout=30) == 1
        first = ray.get(ref.actor.info.remote())
        eid = f"idle-{placement}"
        if placement == "hosted":  # idle timeout + sweep: dropped from the host's memory
            _poll(
                lambda: eid not in ray.get(ref.actor.info.remote())["entities"],
                "the idle aggregate was never passivated",
            )
        else:  # idle timeout + sweep + retirement: the dedicated actor is gone
            _poll(
                lambda: f"{system.name}:ledger|{eid}" not in _live_actors(system),
                "the idle dedicated host never retired",
            )
        # the next command reactivates it (recovering from the journal), transparently; a
        # dedicated host is a new Ray worker process: slow to start on a busy machine
        assert ref.ask(Append("b"), timeout=180) == 2
        assert ref.ask(GetBalance(), timeout=30) == 2
        if placement == "dedicated":
            assert ray.get(ref.actor.info.remote())["pid"] != first["pid"]
    finally:
        system.shutdown()


def test_per_node_cap_passivates_the_least_recently_activated(
    cassandra_contact, cassandra_keyspace, ray_local
) -> None:
    system = _system(
        cassandra_contact,
        cassandra_keyspace,
        max_active_per_node=2,
        host_settings={"ledger": {"retire_grace_s": 0.2}},
    )
    try:
        refs = [system.entity(LEDGER, f"cap-{i}") for i in range(3)]
        for i, ref in enumerate(refs):
            assert ref.ask(Append(f"op-{i}"), timeout=30) == 1
        _poll(
            lambda: f"{system.name}:ledger|cap-0" not in _live_actors(system),
            "the cap never passivated anything",
        )
        live = _live_actors(system)  # the oldest went first, the two newest stay
        assert {f"{system.name}:ledger|cap-1", f"{system.name}:ledger|cap-2"} <= live
        # and it is still reachable: reactivated with its history
        assert refs[0].ask(Append("again"), timeout=30) == 2
    finally:
        system.shutdown()
