"""Idempotency keys in the entity core and host (issue 15), in-memory: the same key twice —
sequentially, concurrently (one flush), across passivation, after a restart from a snapshot —
is applied once and answered with the same reply; a rejection is remembered in memory only;
retention bounds the table (count and age) and a forgotten key applies again (documented);
keys off: ignored; a reply that cannot be stored fails its command before anything is written;
the history checker's rule "each key applied at most once"."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from unit_guard import no_ray  # noqa: F401

from raysource.errors import CommandRejected, ConfigError, UnserializableError
from raysource.examples.ledger import LEDGER, Append, Appended, GetBalance, LedgerState
from raysource.journal.api import StoredEvent
from raysource.journal.memory import InMemoryJournal
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import (
    AggregateType,
    IdempotencyPolicy,
    SnapshotPolicy,
    persist,
    reject,
)
from raysource.runtime.core import EntityCore
from raysource.runtime.host import AggregateHost
from raysource.runtime.idempotency import (
    KEY_FIELD,
    KEYED_SNAPSHOT_MANIFEST,
    Keyed,
    snapshot_state,
)
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.snapshots.memory import InMemorySnapshotStore
from raysource.testing.history import History, check_history

T = dataclasses.replace(LEDGER, snapshot=SnapshotPolicy(every_n_events=2, keep=1))
SER = serialization_for(T, StoreSpec())
PID = T.persistence_id("a")


def _run(coro):
    return asyncio.run(coro)


async def _stored(journal: InMemoryJournal, pid: str = PID) -> list[StoredEvent]:
    return [e async for e in journal.replay(pid)]


def _core(journal, snaps, agg: AggregateType = T, writer: str = "w", **kw) -> EntityCore:
    return EntityCore(
        agg, "a", journal, snaps, serialization_for(agg, StoreSpec()), writer_id=writer, **kw
    )


def test_same_key_sequentially_and_concurrently_applies_once_with_the_same_reply() -> None:
    async def main():
        j = InMemoryJournal()
        core = _core(j, InMemorySnapshotStore())
        first = await core.handle(Keyed(Append("x", 5), "k1"))
        again = await core.handle(Keyed(Append("x", 5), "k1"))
        await core.handle(Append("y", 1))  # another command in between moves the state
        late = await core.handle(Keyed(Append("x", 5), "k1"))
        # concurrently: both copies land in one flush; the second follows the first
        both = await asyncio.gather(*(core.handle(Keyed(Append("z", 2), "k2")) for _ in range(3)))
        assert core.stats.repeats == 4
        await core.stop()
        return first, again, late, both, await _stored(j), core.state

    first, again, late, both, stored, state = _run(main())
    assert first == again == late == 5
    assert both == [8, 8, 8]  # + 2 + 2 repeats counted below
    assert [SER.decode(e.serializer_id, e.manifest, e.payload).op_id for e in stored] == [
        "x",
        "y",
        "z",
    ]
    assert state.balance == 8
    assert [e.metadata.get(KEY_FIELD) for e in stored] == ["k1", None, "k2"]


def test_a_copy_arriving_while_the_first_is_being_written_gets_its_reply() -> None:
    async def main():
        j = InMemoryJournal(latency=0.02)
        core = _core(j, InMemorySnapshotStore())
        await core.start()
        first = asyncio.ensure_future(core.handle(Keyed(Append("x", 5), "k1")))
        await asyncio.sleep(0.005)  # the first copy's write is in flight
        assert not first.done()
        second = await core.handle(Keyed(Append("x", 5), "k1"))  # the next flush
        flushes = core.stats.flushes
        await core.stop()
        return await first, second, flushes, await _stored(j)

    first, second, flushes, stored = _run(main())
    assert first == second == 5 and flushes == 2 and len(stored) == 1


def test_a_key_survives_passivation_and_a_restart_from_a_snapshot() -> None:
    async def main():
        j, snaps = InMemoryJournal(), InMemorySnapshotStore()
        host = AggregateHost(T, j, snaps, SER)
        r1 = await host.ask("a", Keyed(Append("x", 5), "k1"))
        assert await host.passivate("a")
        r2 = await host.ask("a", Keyed(Append("x", 5), "k1"))  # a fresh activation (replay)
        await host.ask("a", Keyed(Append("y", 1), "k2"))  # #2: a snapshot with both keys
        assert host.info()["stats"]["repeats"] == 1
        await host.close()
        assert snaps.snapshots(PID)[-1].manifest == KEYED_SNAPSHOT_MANIFEST
        # the restart recovers from the snapshot alone: the keys must come from it
        core = _core(j, snaps, writer="w2")
        r3 = await core.handle(Keyed(Append("x", 5), "k1"))
        r4 = await core.handle(Keyed(Append("y", 1), "k2"))
        rec = core.recovery
        await core.stop()
        return (r1, r2, r3, r4), rec, await _stored(j), snaps

    replies, rec, stored, snaps = _run(main())
    assert replies == (5, 5, 5, 6)
    assert rec.snapshot_sequence_nr == 2 and rec.events_replayed == 0
    assert len(stored) == 2  # the retries after the restart wrote nothing
    # the state inside the envelope, for tools that decode snapshots
    (snap,) = snaps.snapshots(PID)
    assert SER.decode(*snapshot_state(snap)) == LedgerState(balance=6, count=2)


def test_a_corrupt_keyed_snapshot_falls_back_to_the_events_keys_included() -> None:
    async def main():
        j, snaps = InMemoryJournal(), InMemorySnapshotStore()
        core = _core(j, snaps)
        for n in range(2):
            await core.handle(Keyed(Append(f"o{n}", 1), f"k{n}"))
        await core.stop()
        (snap,) = snaps.snapshots(PID)
        await snaps.save(dataclasses.replace(snap, payload=b"not msgpack"))
        fresh = _core(j, snaps, writer="w2")
        again = await fresh.handle(Keyed(Append("o0", 1), "k0"))
        rec = fresh.recovery
        await fresh.stop()
        return again, rec, await _stored(j)

    again, rec, stored = _run(main())
    assert rec.snapshots_skipped == 1 and rec.events_replayed == 2
    assert again == 1 and len(stored) == 2


def test_a_journal_without_usable_snapshots_rebuilds_the_keys_from_the_events() -> None:
    async def main():
        j, snaps = InMemoryJournal(), InMemorySnapshotStore()
        core = _core(j, snaps)
        for n in range(5):
            await core.handle(Keyed(Append(f"o{n}", 1), f"k{n}"))
        await core.stop()
        fresh = _core(j, InMemorySnapshotStore(), writer="w2")  # every snapshot lost
        out = [await fresh.handle(Keyed(Append(f"o{n}", 1), f"k{n}")) for n in range(5)]
        await fresh.stop()
        return out, await _stored(j)

    out, stored = _run(main())
    assert out == [1, 2, 3, 4, 5] and len(stored) == 5


def test_a_rejection_is_remembered_in_memory_only() -> None:
    async def main():
        j, snaps = InMemoryJournal(), InMemorySnapshotStore()
        core = _core(j, snaps)
        errors = []
        for _ in range(2):
            try:
                await core.handle(Keyed(Append("bad", -1), "k-bad"))
            except CommandRejected as exc:
                errors.append(exc.reason)
        await core.stop()
        # a restart forgets it (nothing was written): decided again on the newer state
        fresh = _core(j, snaps, writer="w2")
        with pytest.raises(CommandRejected):
            await fresh.handle(Keyed(Append("bad", -1), "k-bad"))
        assert "k-bad" in fresh.keys.keys()
        await fresh.stop()
        return errors, await _stored(j)

    errors, stored = _run(main())
    assert errors == ["amount must be positive, got -1"] * 2 and stored == []


def test_read_only_commands_are_not_remembered() -> None:
    async def main():
        core = _core(InMemoryJournal(), InMemorySnapshotStore())
        b0 = await core.handle(Keyed(GetBalance(), "q"))
        await core.handle(Append("x", 3))
        b1 = await core.handle(Keyed(GetBalance(), "q"))  # re-read, not the old answer
        keys = list(core.keys.keys())
        await core.stop()
        return b0, b1, keys

    assert _run(main()) == (0, 3, [])


def test_retention_by_count_evicts_the_oldest_keys_and_a_forgotten_key_applies_again() -> None:
    agg = dataclasses.replace(T, idempotency=IdempotencyPolicy(max_keys=3))

    async def main():
        j, snaps = InMemoryJournal(), InMemorySnapshotStore()
        core = _core(j, snaps, agg)
        for n in range(6):
            await core.handle(Keyed(Append(f"o{n}", 1), f"k{n}"))
        kept = list(core.keys.keys())
        repeat_new = await core.handle(Keyed(Append("o5", 1), "k5"))  # remembered
        repeat_old = await core.handle(Keyed(Append("o0", 1), "k0"))  # forgotten: applied
        await core.stop()
        fresh = _core(j, snaps, agg, writer="w2")  # snapshot + replay keep the bound too
        await fresh.start()
        recovered = list(fresh.keys.keys())
        await fresh.stop()
        return kept, repeat_new, repeat_old, recovered, await _stored(j)

    kept, repeat_new, repeat_old, recovered, stored = _run(main())
    assert kept == ["k3", "k4", "k5"]
    assert repeat_new == 6 and repeat_old == 7
    assert recovered == ["k4", "k5", "k0"]
    assert len(stored) == 7


def test_retention_by_age_forgets_keys_older_than_max_age() -> None:
    agg = dataclasses.replace(T, idempotency=IdempotencyPolicy(max_keys=None, max_age_s=60))
    now = [datetime(2026, 1, 1, tzinfo=UTC)]

    async def main():
        j = InMemoryJournal()
        core = _core(j, InMemorySnapshotStore(), agg, wall_clock=lambda: now[0])
        await core.handle(Keyed(Append("x", 1), "k1"))
        now[0] += timedelta(seconds=59)
        within = await core.handle(Keyed(Append("x", 1), "k1"))
        now[0] += timedelta(seconds=2)
        after = await core.handle(Keyed(Append("x", 1), "k1"))  # 61 s old: applied again
        await core.stop()
        return within, after, await _stored(j)

    within, after, stored = _run(main())
    assert (within, after, len(stored)) == (1, 2, 2)


def test_keys_off_ignores_keys_and_the_ref_refuses_an_explicit_key() -> None:
    agg = dataclasses.replace(T, idempotency=IdempotencyPolicy(enabled=False))

    async def main():
        j = InMemoryJournal()
        core = _core(j, InMemorySnapshotStore(), agg)
        await core.handle(Keyed(Append("x", 1), "k1"))
        await core.handle(Keyed(Append("x", 1), "k1"))
        await core.stop()
        return await _stored(j)

    stored = _run(main())
    assert len(stored) == 2 and all(not e.metadata for e in stored)

    class NoResolver:
        def resolve(self, *_a):
            raise AssertionError("must not be reached")

        def invalidate(self, *_a, **_k):
            pass

    with pytest.raises(ConfigError, match="keys off"):
        EntityRef(agg, "a", NoResolver()).ask(Append("x", 1), idempotency_key="k1")
    with pytest.raises(ConfigError, match="idempotency keys for"):
        EntityRef(T, "a", NoResolver()).ask_many([Append("x", 1)], idempotency_keys=[])
    with pytest.raises(ConfigError, match="idempotency key"):
        Keyed(Append("x", 1), "")
    with pytest.raises(ConfigError):
        IdempotencyPolicy(max_keys=None, max_age_s=None)


class Opaque:  # a reply type the serialization does not know
    pass


def _opaque_handler(state, command):
    return (
        persist(Appended(command.op_id, command.amount), reply=Opaque())
        if command.amount > 0
        else reject("no")
    )


def test_a_reply_that_cannot_be_stored_fails_its_command_and_writes_nothing() -> None:
    agg = dataclasses.replace(T, name="opaque", command_handler=_opaque_handler)
    pid = agg.persistence_id("a")

    async def main():
        j = InMemoryJournal()
        core = _core(j, InMemorySnapshotStore(), agg)
        with pytest.raises(UnserializableError):
            await core.handle(Keyed(Append("x", 1), "k1"))
        unkeyed = await core.handle(Append("y", 1))  # without a key the reply is not stored
        await core.stop()
        return unkeyed, await _stored(j, pid)

    unkeyed, stored = _run(main())
    assert isinstance(unkeyed, Opaque) and len(stored) == 1


def test_the_history_checker_flags_a_key_applied_twice() -> None:
    async def main():
        j = InMemoryJournal()
        ts = datetime.now(UTC)

        def ev(seq, op, key):
            _, manifest, payload = SER.encode(Appended(op, 1))
            return StoredEvent(
                PID,
                seq,
                payload,
                manifest,
                1,
                ts,
                "w",
                metadata={KEY_FIELD: key, "ir": "1|json#1|MQ=="},
            )

        # the same key with two (different-looking) applications: op ids differ, so only the
        # key rule can see that one logical command ran twice
        await j.append([ev(1, "x-1", "k1")])
        await j.append([ev(2, "x-2", "k1")])
        await j.append([ev(3, "y", "k2")])
        history = History()
        for cmd in ("x-1", "x-2", "y"):
            history.record(cmd, "ok")
        return await check_history(
            history,
            j,
            aggregate_type=T,
            serialization=SER,
            persistence_ids=[PID],
            command_of=lambda e: e.op_id,
        )

    violations = _run(main())
    assert [v.kind for v in violations] == ["key_applied_twice"]
    assert "'k1' applied 2 times (#1, #2)" in violations[0].message
