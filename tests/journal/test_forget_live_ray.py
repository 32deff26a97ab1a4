"""A forget reaches the live aggregates (issue 27) on real Ray + Cassandra: after the key is
destroyed, a live aggregate still holds the name it decoded before (shown first, the gap this
closes); ``raysource forget SUBJECT --system NAME`` (``System.forget_live``) makes every host
(shared and dedicated) drop the subject's cached key and passivate, so the next command
recovers with the placeholder while the other subject of the same event stays readable, and new
personal data for the subject is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from raysource.cli.main import main
from raysource.examples.seats import SHOW, GetShow, ReserveSeat
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.keyring import FORGOTTEN
from raysource.ops import forget
from raysource.runtime.stores import StoreSpec
from raysource.sharding.system import System

pytestmark = pytest.mark.cassandra

ALICE, BOB = "Alice Zyxwv", "Bob Qwerty"


async def test_forget_reaches_live_aggregates(
    ray_local, cassandra_contact, cassandra_keyspace, capsys
):
    config = CassandraConfig.from_contact(cassandra_contact, keyspace=cassandra_keyspace)
    run = uuid.uuid4().hex[:6]
    hosted = dataclasses.replace(SHOW, name=f"lfh{run}", number_of_shards=2)
    dedicated = dataclasses.replace(SHOW, name=f"lfd{run}")
    alice, bob = f"alice-{run}", f"bob-{run}"
    system = await asyncio.to_thread(
        System.start,
        f"lf{run}",
        store=StoreSpec.for_cassandra(config, create_schema=True),
        types=[hosted, dedicated],
        placement={hosted.name: "hosted", dedicated.name: "dedicated"},
        timers=None,
    )
    try:
        refs = [system.entity(t, "s1") for t in (hosted, dedicated)]

        def names() -> list[tuple[str, str]]:
            out = []
            for ref in refs:
                a = ref.ask(GetShow(), timeout=60).attendees["A1"]
                out.append((a.name, a.guest_name))
            return out

        for ref in refs:
            await asyncio.to_thread(ref.ask, ReserveSeat("A1", alice, ALICE, bob, BOB), timeout=60)
        assert await asyncio.to_thread(names) == [(ALICE, BOB)] * 2
        await forget.forget_subject(config, alice, settle=0)
        # the live states still hold what they decoded before the forget
        assert await asyncio.to_thread(names) == [(ALICE, BOB)] * 2

        # `raysource forget SUBJECT --system NAME`: the key (again: idempotent), then the hosts
        code = await asyncio.to_thread(
            main,
            [
                "forget",
                alice,
                "--system",
                system.name,
                "--namespace",
                system.spec.namespace,
                "--cassandra",
                f"{config.contact_points[0]}:{config.port}",
                "--keyspace",
                config.keyspace,
                "--settle",
                "0",
            ],
        )
        assert code == 0
        assert f"live: 2 active aggregate(s) of system {system.name} passivated" in (
            capsys.readouterr().out
        )
        assert await asyncio.to_thread(names) == [(FORGOTTEN, BOB)] * 2
        for ref in refs:  # the hosts' caches know: new personal data for alice is refused
            with pytest.raises(Exception, match="forgotten"):
                await asyncio.to_thread(ref.ask, ReserveSeat("A2", alice, "Alice 2"), timeout=60)
        assert await asyncio.to_thread(system.forget_live, alice) == 2  # active again: stops
    finally:
        await asyncio.to_thread(system.shutdown)
