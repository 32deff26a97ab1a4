"""ShardGate (which shards a shared host actor serves), without Ray: grants only what the owner
confirms, one question per shard at a time, and never grants on an answer a handoff overtook."""

from __future__ import annotations

import asyncio

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.journal.errors import ConfigError, NotAppliedError
from raysource.runtime.actors.shard_gate import ShardGate, slot_of
from raysource.runtime.errors import AggregateStoppedError, PassivatedError
from raysource.runtime.shard_id import shard_of

SHARDS = 8


def entity_in(shard: int) -> str:
    return next(e for e in (f"e{i}" for i in range(10_000)) if shard_of(e, SHARDS) == shard)


class Owner:
    """Answers from ``homes`` (shard -> ours?), each answer held until ``release``."""

    def __init__(self, homes: dict[int, bool]) -> None:
        self.homes, self.asked = homes, []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, type_name: str, shard: int) -> bool:
        self.asked.append(shard)
        answer = self.homes[shard]  # decided when asked, like a coordinator reply in flight
        await self.release.wait()
        return answer


def gate(owner) -> ShardGate:
    return ShardGate("t:hosts:show:n1:0", "show", SHARDS, 2, 0, owner)


async def test_grants_what_the_owner_confirms_with_one_question_per_shard():
    owner = Owner({0: True, 2: False})
    g = gate(owner)
    owner.release.clear()
    waiting = [asyncio.ensure_future(g.admit(entity_in(0))) for _ in range(20)]
    await asyncio.sleep(0.01)
    owner.release.set()
    await asyncio.gather(*waiting)
    assert owner.asked == [0] and g.granted == [0]
    await g.admit(entity_in(0))  # granted: no new question
    assert owner.asked == [0] and g.refusal(entity_in(0)) is None
    with pytest.raises(AggregateStoppedError, match="another node") as err:
        await g.admit(entity_in(2))
    assert isinstance(err.value, NotAppliedError) and not isinstance(err.value, PassivatedError)
    assert g.granted == [0] and isinstance(g.refusal(entity_in(2)), AggregateStoppedError)
    with pytest.raises(ConfigError):  # shard 1 is slot 1's
        await g.admit(entity_in(1))
    assert slot_of(5, 2) == 1 and slot_of(4, 2) == 0


async def test_an_answer_overtaken_by_a_revocation_is_asked_again():
    owner = Owner({0: True})
    g = gate(owner)
    owner.release.clear()
    admit = asyncio.ensure_future(g.admit(entity_in(0)))
    await asyncio.sleep(0.01)  # the question is out; its answer ("ours") is now stale:
    moved = g.revoke([0])  # the handoff starts, and the move makes another node the home
    owner.homes[0] = False
    owner.release.set()
    with pytest.raises(AggregateStoppedError):
        await admit
    assert owner.asked == [0, 0] and g.granted == []
    assert moved(entity_in(0)) and not moved(entity_in(2))


async def test_revocation_refuses_at_once_and_the_shard_can_come_back():
    owner = Owner({0: True, 2: True})
    g = gate(owner)
    await g.admit(entity_in(0))
    await g.admit(entity_in(2))
    g.revoke([0])
    assert g.granted == [2] and isinstance(g.refusal(entity_in(0)), AggregateStoppedError)
    await g.admit(entity_in(0))  # home here again (moved back): asked afresh, granted
    assert g.granted == [0, 2] and owner.asked == [0, 2, 0]


async def test_an_unreachable_owner_is_not_applied():
    async def down(type_name: str, shard: int) -> bool:
        raise ConnectionError("coordinator restarting")

    g = gate(down)
    with pytest.raises(AggregateStoppedError, match="could not be confirmed"):
        await g.admit(entity_in(0))
    assert g.granted == []


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"hosts_per_node": 0}, "hosts_per_node must be an int >= 1"),
        ({"hosts_per_node": "4"}, "hosts_per_node must be an int >= 1"),
        ({"hosts_per_nodes": 4}, "host_settings of 'show'"),
    ],
)
def test_bad_host_settings_are_a_config_error_before_ray_starts(settings, says):
    import ray

    from raysource.examples.seats import SHOW
    from raysource.runtime.stores import StoreSpec
    from raysource.sharding.system import System

    with pytest.raises(ConfigError, match=says):
        System.start(
            "bad",
            store=StoreSpec(),
            types=[SHOW],
            placement={"show": "hosted"},
            host_settings={"show": settings},
        )
    assert not ray.is_initialized()
