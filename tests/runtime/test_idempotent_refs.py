"""The references' retry rule with idempotency keys (issue 15), without Ray: ``EntityRef`` talks
to a stand-in for the host actor handle (``handle.ask_ordered.remote(...)`` -> an awaitable that
fails like Ray does: ``RayTaskError`` around the host's error, ``ActorDiedError`` for a dead
actor) around the real ``AggregateHost``/``EntityCore`` on a faulty in-memory journal.

Each test makes an attempt's outcome unknown in one way (a write stored but unconfirmed whose
re-read fails: ``WriteOutcomeUnknownError``; the actor dying after applying; a write stalled
past the deadline) and checks what the caller sees — a reply, or at the deadline an
``OutcomeUnknownError`` naming the key — against the journal: the key applied exactly once."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from unit_guard import no_ray  # noqa: F401

from raysource.errors import OutcomeUnknownError, WriteOutcomeUnknownError
from raysource.examples.ledger import LEDGER, Append
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import IdempotencyPolicy
from raysource.runtime.host import AggregateHost
from raysource.runtime.idempotency import KEY_FIELD
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing import faults as fk

SER = serialization_for(LEDGER, StoreSpec())
PID = LEDGER.persistence_id("a")


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


class FakeActor:
    """A host actor handle as the refs use it; ``die_after_next``: the next call is applied,
    then the actor dies before answering (its caller hears ``ActorDiedError``)."""

    def __init__(self, host: AggregateHost) -> None:
        self.host, self.dead, self.die_after_next = host, False, False
        self.ask_ordered = _Method(self._ask_ordered)
        self.ask_many = _Method(self._ask_many)

    async def _call(self, name, coro):
        if self.dead:
            coro.close()
            raise ActorDiedError()
        try:
            out = await coro
        except Exception as exc:
            raise RayTaskError(name, "", exc) from None
        if self.die_after_next:
            self.dead = True
            raise ActorDiedError()
        return out

    async def _ask_ordered(self, eid, caller, seq, cmd):
        return await self._call("ask_ordered", self.host.ask_ordered(eid, caller, seq, cmd))

    async def _ask_many(self, eid, caller, seq, cmds):
        return await self._call("ask_many", self.host.ask_many(eid, caller, seq, cmds))


class FakeResolver:
    """A new actor (a new host on the same stores) whenever the current one is dead."""

    def __init__(self, agg=LEDGER, journal=None) -> None:
        self.agg = agg
        self.journal = fk.FaultyJournal(journal or InMemoryJournal())
        self.snapshots = InMemorySnapshotStore()
        self.actors: list[FakeActor] = []

    def resolve(self, _agg, _eid):
        if not self.actors or self.actors[-1].dead:
            self.actors.append(
                FakeActor(
                    AggregateHost(
                        self.agg,
                        self.journal,
                        self.snapshots,
                        serialization_for(self.agg, StoreSpec()),
                        writer_prefix=f"actor{len(self.actors)}",
                    )
                )
            )
        return self.actors[-1]

    def invalidate(self, _agg, _eid, handle=None):
        pass

    async def stored(self, pid: str = PID) -> list:
        return [e async for e in self.journal.inner.replay(pid)]

    async def close(self) -> None:
        for a in self.actors:
            await a.host.close()


def _unconfirmed_write_with_failed_reread(r: FakeResolver) -> None:
    # the append is stored but unconfirmed; the re-read that would decide it fails:
    # the activation answers WriteOutcomeUnknownError and stops
    r.journal.add(fk.lose_response("append", nth=1))
    r.journal.add(fk.fail("replay", nth=1))


def test_an_unconfirmed_write_is_re_sent_under_its_key_and_answered_once() -> None:
    async def main():
        r = FakeResolver()
        _unconfirmed_write_with_failed_reread(r)
        ref = EntityRef(LEDGER, "a", r)
        reply = await ref.ask_async(Append("x", 5), timeout=10)
        stored = await r.stored()
        fired = [f.fault for f in r.journal.fired]
        await r.close()
        return reply, stored, fired

    reply, stored, fired = asyncio.run(main())
    assert [str(f) for f in fired] == ["lose_response@append#1", "fail@replay#1"]
    assert reply == 5 and len(stored) == 1 and stored[0].metadata[KEY_FIELD]


def test_an_actor_dying_after_applying_is_re_sent_and_answered_with_the_original_reply():
    async def main():
        r = FakeResolver()
        ref = EntityRef(LEDGER, "a", r)
        await ref.ask_async(Append("w", 1), timeout=10)
        r.resolve(LEDGER, "a").die_after_next = True
        reply = await ref.ask_async(Append("x", 5), timeout=10, idempotency_key="msg-7")
        n_actors = len(r.actors)
        stored = await r.stored()
        await r.close()
        return reply, n_actors, stored

    reply, n_actors, stored = asyncio.run(main())
    assert reply == 6 and n_actors == 2  # answered by the next actor, from the key table
    assert [e.metadata.get(KEY_FIELD) for e in stored][1] == "msg-7" and len(stored) == 2


def test_after_an_unknown_outcome_a_not_applied_answer_is_not_final() -> None:
    async def main():
        r = FakeResolver()
        _unconfirmed_write_with_failed_reread(r)
        # the next activation's recovery fails (JournalUnavailableError: "not applied" for
        # that attempt), which says nothing about the first attempt: the ref goes on
        r.journal.add(fk.fail("highest", nth=3))
        reply = await EntityRef(LEDGER, "a", r).ask_async(Append("x", 5), timeout=10)
        stored, fired = await r.stored(), [str(f.fault) for f in r.journal.fired]
        await r.close()
        return reply, stored, fired

    reply, stored, fired = asyncio.run(main())
    assert "fail@highest#3" in fired
    assert reply == 5 and len(stored) == 1


def test_at_the_deadline_the_error_names_the_key_and_a_later_re_send_learns_the_outcome():
    async def main():
        r = FakeResolver()
        gate = asyncio.Event()
        r.journal.add(fk.stall(gate, "append", nth=1))
        ref = EntityRef(LEDGER, "a", r)
        with pytest.raises(OutcomeUnknownError) as info:
            await ref.ask_async(Append("x", 5), timeout=0.3, idempotency_key="order-17")
        gate.set()  # the store answers after all
        again = await ref.ask_async(Append("x", 5), timeout=10, idempotency_key="order-17")
        stored = await r.stored()
        await r.close()
        return info.value, again, stored

    err, again, stored = asyncio.run(main())
    assert err.idempotency_key == "order-17" and "'order-17'" in str(err)
    assert again == 5 and len(stored) == 1


def test_a_keyed_batch_is_answered_once_per_command_through_an_unknown_write() -> None:
    async def main():
        r = FakeResolver()
        _unconfirmed_write_with_failed_reread(r)
        out = await EntityRef(LEDGER, "a", r).ask_many_async(
            [Append(f"o{i}", 1) for i in range(4)],
            timeout=10,
            idempotency_keys=[f"m{i}" for i in range(4)],
        )
        stored = await r.stored()
        await r.close()
        return out, stored

    out, stored = asyncio.run(main())
    assert out == [1, 2, 3, 4]
    assert [e.metadata[KEY_FIELD] for e in stored] == ["m0", "m1", "m2", "m3"]


def test_with_keys_off_the_unknown_outcome_reaches_the_caller() -> None:
    agg = dataclasses.replace(LEDGER, idempotency=IdempotencyPolicy(enabled=False))

    async def main():
        r = FakeResolver(agg)
        _unconfirmed_write_with_failed_reread(r)
        with pytest.raises(WriteOutcomeUnknownError) as info:
            await EntityRef(agg, "a", r).ask_async(Append("x", 5), timeout=10)
        await r.close()
        return info.value

    assert getattr(asyncio.run(main()), "idempotency_key", None) is None
