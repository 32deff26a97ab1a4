"""``EntityRef.state`` and ``raysource state TYPE ID`` on real Ray and Cassandra: the CLI
(a separate driver process) joins the running system through the session's Ray and prints the
live aggregate's state; a system that is not running, an unknown type and an unreachable Ray
are clear errors (exit 2), and nothing is created for them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from raysource.examples.seats import SHOW, CancelReservation, GetShow, ReserveSeat, ShowState
from raysource.journal.cassandra.config import CassandraConfig
from raysource.runtime.stores import StoreSpec
from raysource.sharding.ray_nodes import coordinator_name
from raysource.sharding.system import System

pytestmark = [pytest.mark.ray, pytest.mark.cassandra]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def system(ray_local, cassandra_contact, cassandra_keyspace):
    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    name = f"st{uuid.uuid4().hex[:8]}"
    system = System.start(
        name,
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[SHOW],
        placement={"show": "hosted"},
    )
    yield system
    system.shutdown()


def _cli(ray_local, cassandra_contact, keyspace: str, *args: str) -> subprocess.CompletedProcess:
    ctx = ray_local.get_runtime_context()
    host, port = cassandra_contact
    # same environment: Ray 2.60 local clusters use token auth, and the token file it wrote
    # is found again through the same HOME / RAY_* variables
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "raysource.cli",
            "state",
            *args,
            "--address",
            ctx.gcs_address,
            "--namespace",
            ctx.namespace,
            "--cassandra",
            f"{host}:{port}",
            "--keyspace",
            keyspace,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ),
    )


@pytest.mark.timeout(60)
def test_entity_ref_state_reads_without_writing(system):
    ref = system.entity(SHOW, f"ref-{uuid.uuid4().hex[:6]}")
    assert ref.state(timeout=30) == ShowState()  # activates a new aggregate
    ref.ask(ReserveSeat("A1", "alice"), timeout=30)
    ref.ask(ReserveSeat("B2", "bob"), timeout=30)
    ref.ask(CancelReservation("B2", "bob"), timeout=30)
    state = ref.state(timeout=30)
    assert state.reservations == {"A1": "alice"}
    assert state == ref.ask(GetShow(), timeout=30)
    info = ray_info(ref)
    writes = info["stats"]["writes"]
    ref.state(timeout=30)
    assert ray_info(ref)["stats"]["writes"] == writes  # read-only: no journal write

    # after passivation the next state call re-activates (recovery from the journal)
    import ray

    assert ray.get(ref.actor.passivate.remote(ref.entity_id))
    assert ref.state(timeout=30).reservations == {"A1": "alice"}


def ray_info(ref) -> dict:
    import ray

    return ray.get(ref.actor.info.remote())


@pytest.mark.timeout(60)
def test_state_of_a_retired_dedicated_actor(ray_local, cassandra_contact, cassandra_keyspace):
    """A retired dedicated actor refuses ``state`` like any call (PassivatedError); the ref
    re-sends it to a fresh activation, which recovers the state."""
    from raysource.runtime.actors.refs import EntityRef
    from raysource.runtime.errors import PassivatedError
    from raysource.testing.local_resolver import LocalResolver

    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    resolver = LocalResolver(
        f"sd{uuid.uuid4().hex[:8]}",
        StoreSpec.for_cassandra(config),
        namespace=ray_local.get_runtime_context().namespace,
    )
    try:
        ref = EntityRef(SHOW, f"retired-{uuid.uuid4().hex[:6]}", resolver)
        ref.ask(ReserveSeat("C3", "carol"), timeout=30)
        old = ref.actor
        assert ray_local.get(old.passivate.remote())  # the dedicated actor retires
        with pytest.raises(PassivatedError):
            ray_local.get(old.state.remote())
        assert ref.state(timeout=30).reservations == {"C3": "carol"}
        assert ref.actor is not old
    finally:
        resolver.kill_all()


def _actors(ray_local, system_name: str) -> list[str]:
    return sorted(
        a["name"]
        for a in ray_local.util.list_named_actors(all_namespaces=True)
        if system_name in a["name"]
    )


@pytest.mark.timeout(90)
def test_system_connect_joins_a_running_system_and_starts_nothing(
    system, ray_local, cassandra_contact, cassandra_keyspace, monkeypatch
):
    """``System.connect`` (what ``raysource state`` joins with): the running system's shard
    count wins over the caller's, commands and state reach the same single-writer aggregate,
    and a missing system or an unregistered type is a ConfigError that creates nothing (no
    coordinator, no registration, no timer service)."""
    from dataclasses import replace

    from raysource.errors import ConfigError
    from raysource.examples.ledger import LEDGER

    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)
    store = StoreSpec.for_cassandra(config)
    namespace = ray_local.get_runtime_context().namespace
    before = _actors(ray_local, system.name)
    counts = ray_local.get(system.coordinator.shard_counts.remote())
    import raysource.sharding.system as system_module

    def refused(*args, **kwargs):
        raise AssertionError("System.connect created a coordinator or a timer service")

    for creator in ("get_or_create_coordinator", "get_or_create_timer_service"):
        monkeypatch.setattr(system_module, creator, refused)

    other_count = replace(SHOW, number_of_shards=SHOW.number_of_shards + 7)
    joined = System.connect(
        system.name,
        store=store,
        types=[other_count],
        namespace=namespace,
        placement={"show": "hosted"},
    )
    assert joined.aggregate_type("show").number_of_shards == counts["show"]
    show = f"conn-{uuid.uuid4().hex[:6]}"
    system.entity(SHOW, show).ask(ReserveSeat("A1", "alice"), timeout=30)
    ref = joined.entity("show", show)
    assert ref.state(timeout=30).reservations == {"A1": "alice"}
    ref.ask(ReserveSeat("B2", "bob"), timeout=30)  # the same aggregate, not a second writer
    assert system.entity(SHOW, show).ask(GetShow(), timeout=30).reservations == {
        "A1": "alice",
        "B2": "bob",
    }
    assert ray_local.get(system.coordinator.shard_counts.remote()) == counts

    missing = f"nosuch{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError, match=f"no raysource system {missing} is running"):
        System.connect(missing, store=store, types=[SHOW], namespace=namespace)
    assert _actors(ray_local, missing) == []
    with pytest.raises(ConfigError, match="'ledger' is not registered in system"):
        System.connect(system.name, store=store, types=[SHOW, LEDGER], namespace=namespace)
    with pytest.raises(ConfigError, match="must be unique"):
        System.connect(system.name, store=store, types=[SHOW, SHOW], namespace=namespace)
    assert ray_local.get(system.coordinator.shard_counts.remote()) == counts  # nothing registered
    # nothing of the system's own started by joining: at most the entity's host activation
    after = [n for n in _actors(ray_local, system.name) if n not in before]
    assert not [n for n in after if ":timers:" in n or "coordinator" in n], after


@pytest.mark.timeout(60)
def test_cli_state_prints_the_live_state(system, ray_local, cassandra_contact, cassandra_keyspace):
    show = f"cli-{uuid.uuid4().hex[:6]}"
    ref = system.entity(SHOW, show)
    ref.ask(ReserveSeat("A1", "alice"), timeout=30)
    ref.ask(ReserveSeat("C7", "carol"), timeout=30)

    done = _cli(
        ray_local, cassandra_contact, cassandra_keyspace, "show", show, "--system", system.name
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"show|{show} ({system.name}):"
    assert "  reservations = {'A1': 'alice', 'C7': 'carol'}" in lines
    assert "  seats = 100" in lines


@pytest.mark.timeout(90)
def test_personal_data_on_ray_is_sealed_and_the_state_cli_hides_a_forgotten_subject(
    system, ray_local, cassandra_contact, cassandra_keyspace
):
    """Host actors seal personal fields with the Cassandra key store of their keyspace; after
    ``forget`` the live aggregate still holds the name in memory, but ``raysource state``
    prints the placeholder for the forgotten customer and the guest's name as it is."""
    import asyncio

    from raysource.journal.cassandra.session import CassandraSession
    from raysource.ops.forget import forget_subject

    show = f"pd-{uuid.uuid4().hex[:6]}"
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    ref = system.entity(SHOW, show)
    ref.ask(
        ReserveSeat("A1", customer, name="Zed Secretname", guest="g1", guest_name="Gus Guest"),
        timeout=30,
    )
    host, port = cassandra_contact
    config = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def stored_then_forget() -> list[bytes]:
        async with CassandraSession(config) as session:
            rows = await session.select_all(
                f"SELECT payload FROM {cassandra_keyspace}.messages_v2 WHERE "
                "persistence_id = ? AND partition_nr = 0",
                (f"show|{show}",),
            )
            await forget_subject(config, customer, session=session, settle=0)
        return [bytes(r[0]) for r in rows]

    payloads = asyncio.run(stored_then_forget())
    assert payloads and not any(b"Secretname" in p or b"Gus Guest" in p for p in payloads)
    assert ref.state(timeout=30).attendees["A1"].name == "Zed Secretname"  # in memory still
    done = _cli(
        ray_local, cassandra_contact, cassandra_keyspace, "show", show, "--system", system.name
    )
    assert done.returncode == 0, done.stderr
    assert "Secretname" not in done.stdout
    assert "name='<forgotten>'" in done.stdout and "guest_name='Gus Guest'" in done.stdout


@pytest.mark.timeout(60)
def test_cli_state_errors(system, ray_local, cassandra_contact, cassandra_keyspace):
    missing = f"nosuch{uuid.uuid4().hex[:6]}"
    done = _cli(ray_local, cassandra_contact, cassandra_keyspace, "show", "x", "--system", missing)
    assert done.returncode == 2
    assert f"no raysource system {missing} is running on this Ray cluster" in done.stderr
    names = [a["name"] for a in ray_local.util.list_named_actors(all_namespaces=True)]
    assert coordinator_name(missing) not in names and not any(missing in n for n in names)

    done = _cli(
        ray_local, cassandra_contact, cassandra_keyspace, "movie", "x", "--system", system.name
    )
    assert done.returncode == 2
    assert "unknown aggregate type 'movie'; known types: show" in done.stderr

    done = _cli(
        ray_local, cassandra_contact, cassandra_keyspace, "show", "", "--system", system.name
    )
    assert done.returncode == 2 and "entity id must be a non-empty string" in done.stderr

    host, port = cassandra_contact
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "raysource.cli",
            "state",
            "show",
            "x",
            "--system",
            system.name,
            "--address",
            "127.0.0.1:1",
            "--cassandra",
            f"{host}:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "no Ray cluster reachable at '127.0.0.1:1'" in done.stderr
