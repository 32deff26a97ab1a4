"""Which shards a shared host actor serves (:class:`ShardGate`), and the pure shard -> slot map.

A hosted aggregate type gets ``hosts_per_node`` shared host actors per node; shard ``s`` lives
in slot :func:`slot_of` ``(s, hosts_per_node)`` of its home node. The gate of one such actor:

* **grant**: the first call for a shard asks the :class:`ShardOwner` (the sharding layer's
  coordinator) whether this node is the shard's home; concurrent calls share one question. A
  yes grants the shard until it is revoked; a no (or no answer) refuses the call with
  ``AggregateStoppedError`` (not applied; references re-resolve and find the new home).
* **revoke** (on handoff): synchronous, before the actor's first await, so nothing of the shard
  is admitted afterwards (``refusal`` is the host's activation gate). A question that was in
  flight when a revocation came is asked again: its answer may predate the move. The owner
  answers for a shard being moved only once the move is recorded, so a grant can never be
  based on the old home after its handoff began.

Ray-free; :mod:`raysource.runtime.actors.host_actor` wires it into the actor.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from typing import Protocol

from raysource.journal.errors import ConfigError
from raysource.runtime.errors import AggregateStoppedError
from raysource.runtime.shard_id import shard_of

__all__ = ["ShardGate", "ShardOwner", "slot_of"]


class ShardOwner(Protocol):
    """Whether this host's node is the current home of ``(type_name, shard)`` (picklable; the
    sharding layer asks its coordinator). Must not answer True for a shard being handed off
    from this node before the move is recorded."""

    async def __call__(self, type_name: str, shard: int) -> bool: ...


def slot_of(shard: int, hosts_per_node: int) -> int:
    """The slot (which of a node's shared host actors of a type) of ``shard``: a pure
    function, the same in every process and run."""
    return shard % hosts_per_node


class ShardGate:
    """The shards one shared host actor (``name``, slot ``slot`` of ``hosts``) serves for the
    type ``type_name`` with ``number_of_shards`` shards; ``owner`` None grants every shard of
    the slot (no sharding layer). Use from one event loop."""

    def __init__(
        self,
        name: str,
        type_name: str,
        number_of_shards: int,
        hosts: int,
        slot: int,
        owner: ShardOwner | None,
    ) -> None:
        self.name, self.type_name = name, type_name
        self.number_of_shards, self.hosts, self.slot = number_of_shards, hosts, slot
        self.owner = owner
        self._granted: set[int] = set()
        self._revocations: dict[int, int] = {}
        self._checks: dict[int, asyncio.Future] = {}
        self._shards: dict[str, int] = {}  # entity id -> shard

    @property
    def granted(self) -> list[int]:
        return sorted(self._granted)

    def shard(self, entity_id: str) -> int:
        # asked on every call (a hash of the id): remembered, bounded
        shard = self._shards.get(entity_id)
        if shard is None:
            if len(self._shards) >= 100_000:
                self._shards.clear()
            shard = self._shards[entity_id] = shard_of(entity_id, self.number_of_shards)
        return shard

    def _moved(self, shard: int, why: str) -> AggregateStoppedError:
        return AggregateStoppedError(
            f"{self.name}: shard {shard} of {self.type_name!r} is not served here ({why}); "
            "not applied, retry re-resolves"
        )

    def refusal(self, entity_id: str) -> BaseException | None:
        """The host's activation gate: None for an entity of a granted shard, else the error."""
        shard = self.shard(entity_id)
        return None if shard in self._granted else self._moved(shard, "handed off")

    async def admit(self, entity_id: str) -> None:
        """Return once ``entity_id``'s shard is granted here; raise ``AggregateStoppedError``
        if its home is elsewhere or cannot be confirmed (``ConfigError``: not this slot)."""
        shard = self.shard(entity_id)
        if shard in self._granted:
            return
        if slot_of(shard, self.hosts) != self.slot:
            raise ConfigError(
                f"{self.name} does not host shard {shard} (slot {slot_of(shard, self.hosts)})"
            )
        while shard not in self._granted:
            check = self._checks.get(shard)
            if check is None:
                check = self._checks[shard] = asyncio.ensure_future(self._check(shard))
                check.add_done_callback(functools.partial(self._checked, shard))
            await asyncio.shield(check)

    def _checked(self, shard: int, check: asyncio.Future[None]) -> None:
        self._checks.pop(shard, None)
        if not check.cancelled():
            check.exception()  # retrieved here: never logged as "never retrieved"

    async def _check(self, shard: int) -> None:
        while True:
            revoked = self._revocations.get(shard, 0)
            if self.owner is None:
                ours = True
            else:
                try:
                    ours = await self.owner(self.type_name, shard)
                except Exception as exc:  # noqa: BLE001 - the coordinator is unreachable
                    raise self._moved(shard, f"its home could not be confirmed: {exc!r}") from exc
            if self._revocations.get(shard, 0) == revoked:
                break  # no handoff overtook the answer
        if not ours:
            raise self._moved(shard, "its home is another node")
        self._granted.add(shard)

    def revoke(self, shards: Collection[int]) -> Callable[[str], bool]:
        """Stop serving ``shards`` now; returns the predicate of their entities (for
        :meth:`raysource.runtime.host.AggregateHost.handoff`)."""
        moving = frozenset(shards)
        for s in moving:
            self._revocations[s] = self._revocations.get(s, 0) + 1
            self._granted.discard(s)
        n = self.number_of_shards
        return lambda entity_id: shard_of(entity_id, n) in moving
