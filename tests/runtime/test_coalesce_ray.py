"""Coalescing (``raysource.runtime.actors.coalesce``) on real Ray and Cassandra: concurrent
calls of one process to one host actor share Ray calls (``ask_batches``), and every promise of
the references holds per command.

* many callers of three aggregates on one hosted actor, pipelining bursts that mix replies,
  rejections, an unpicklable command and ``ask_many`` batches: far fewer Ray calls than
  commands, each caller's commands stored in its send order, a rejection or an unpicklable
  command fails only itself, and the journal agrees with every reply (history checker);
* the host actor killed again and again under many keyed callers (mid-batch: calls carry many
  callers' commands): every caller gets its reply, the journal holds each command and key
  exactly once, and each reply is the balance right after its own event;
* a call that never returns (a stuck aggregate) delays the other callers of its host by the
  hold bound only, not until it returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
import uuid
from collections import defaultdict

import pytest

from raysource.errors import CommandRejected, UnserializableError
from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.runtime.actors import coalesce
from raysource.runtime.actors.refs import EntityRef
from raysource.runtime.aggregate import IdempotencyPolicy
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.testing.history import History, assert_no_violations, check_history
from raysource.testing.local_resolver import LocalResolver

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.timeout(300)]

SER = serialization_for(LEDGER, StoreSpec())


@pytest.fixture(scope="module")
def config(cassandra_contact, cassandra_keyspace) -> CassandraConfig:
    host, port = cassandra_contact
    cfg = CassandraConfig(contact_points=(host,), port=port, keyspace=cassandra_keyspace)

    async def create() -> None:
        journal = await CassandraJournal.connect(cfg, create_schema=True)
        await journal.close()

    asyncio.run(create())
    return cfg


def _one_host(config: CassandraConfig) -> LocalResolver:
    """Every ledger on one hosted actor (shard 0), so calls of different aggregates coalesce."""
    return LocalResolver(
        f"co{uuid.uuid4().hex[:8]}",
        StoreSpec("cassandra", config),
        placement={LEDGER.name: "hosted"},
        shard_of=lambda _e, _n: 0,
    )


async def _check(config: CassandraConfig, history: History, entities: list[str]) -> dict:
    """The history against the journal; returns the stored op ids per entity, in order."""
    journal = await CassandraJournal.connect(config)
    try:
        violations = await check_history(
            history,
            journal,
            aggregate_type=LEDGER,
            serialization=SER,
            persistence_ids=[LEDGER.persistence_id(e) for e in entities],
            command_of=lambda event: event.op_id,
            expected_reply=lambda _op, state: state.balance,
            tags=False,
        )
        assert_no_violations(violations)
        return {
            e: [
                SER.decode(ev.serializer_id, ev.manifest, ev.payload).op_id
                async for ev in journal.replay(LEDGER.persistence_id(e))
            ]
            for e in entities
        }
    finally:
        await journal.close()


def _in_send_order(stored: dict[str, list[str]], sent: dict[tuple[str, str], list[str]]) -> None:
    """Each caller's stored commands of an aggregate appear in the order it sent them."""
    for (caller, entity), ops in sent.items():
        mine = set(ops)
        seen = [op for op in stored[entity] if op in mine]
        assert seen == [op for op in ops if op in set(seen)], (caller, entity, seen, ops)


async def test_concurrent_callers_share_calls_and_each_keeps_its_order(config, ray_local):
    resolver = _one_host(config)
    entities = [f"co-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    history = History()
    sent: dict[tuple[str, str], list[str]] = defaultdict(list)  # applied ops, in send order
    refused: list[BaseException] = []
    try:
        await EntityRef(LEDGER, entities[0], resolver).ask_async(Append("warm", 1), timeout=60)
        sent[("warm", entities[0])].append("warm")
        history.record("warm", "ok", 1)
        before = dict(coalesce.STATS)

        async def caller(c: int) -> None:
            entity = entities[c % 3]
            ref = EntityRef(LEDGER, entity, resolver)
            for burst in range(3):
                ops = [f"c{c}-{burst}-{i}" for i in range(4)]
                sent[(f"c{c}", entity)].extend(ops)
                calls = [
                    history.ask(op, ref.ask_async(Append(op, 1), timeout=60), caller=f"c{c}")
                    for op in ops[:2]
                ]
                # a rejection and an unpicklable command among them fail only themselves
                calls.append(
                    history.ask(f"c{c}-{burst}-rejected", ref.ask_async(Append("x", 0), timeout=60))
                )
                calls += [
                    history.ask(op, ref.ask_async(Append(op, 1), timeout=60), caller=f"c{c}")
                    for op in ops[2:]
                ]
                try:
                    await ref.ask_async(Append(threading.Lock()), timeout=60)  # type: ignore
                except UnserializableError as exc:
                    refused.append(exc)
                await asyncio.gather(*calls)
                batch = [f"c{c}-{burst}-m{i}" for i in range(3)]
                sent[(f"c{c}", entity)].extend(batch)
                outcomes = await ref.ask_many_async([Append(op, 1) for op in batch], timeout=60)
                for op, outcome in zip(batch, outcomes):
                    history.record(op, "ok", outcome, f"c{c}")

        await asyncio.gather(*(caller(c) for c in range(24)))
        calls = coalesce.STATS["calls"] - before["calls"]
        commands = coalesce.STATS["commands"] - before["commands"]
        # 24 callers x 3 bursts x (5 asks + a batch of 3); the unpicklable ones never left
        assert commands == 24 * 3 * 8
        assert calls * 3 <= commands, (calls, commands)  # shared calls, not one per command
        assert len(refused) == 24 * 3
        counts = history.counts()
        assert counts == {"ok": 24 * 3 * 7 + 1, "rejected": 24 * 3}, counts
        for o in history.observations:
            if o.outcome == "rejected":
                assert isinstance(o.value, CommandRejected)
        stored = await _check(config, history, entities)
        assert sum(map(len, stored.values())) == 24 * 3 * 7 + 1
        _in_send_order(stored, sent)
    finally:
        resolver.kill_all()


def test_a_host_killed_mid_batch_loses_nothing_and_applies_nothing_twice(config, ray_local):
    import ray

    resolver = _one_host(config)
    entities = [f"ck-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    callers, per_caller, kills = 30, 10, 3
    history = History()
    sent: dict[tuple[str, str], list[str]] = defaultdict(list)
    state = {"answered": 0, "done": False}
    killed = threading.Event()

    async def load() -> None:
        async def caller(c: int) -> None:
            entity = entities[c % 3]
            ref = EntityRef(LEDGER, entity, resolver)
            for n in range(per_caller):
                op = f"k{c}-{n}"
                sent[(f"k{c}", entity)].append(op)
                await history.ask(op, ref.ask_async(Append(op, 1), timeout=90), caller=f"k{c}")
                state["answered"] += 1

        await asyncio.gather(*(caller(c) for c in range(callers)))
        state["done"] = True

    def killer() -> None:
        rng = random.Random(3)
        n = 0
        while n < kills and not state["done"]:
            progress = state["answered"]
            while state["answered"] < progress + 25 and not state["done"]:
                time.sleep(0.005)  # only a host that is serving (batched) calls
            if state["done"]:
                break
            time.sleep(rng.uniform(0.0, 0.01))
            try:
                ray.kill(resolver.resolve(LEDGER, entities[0]), no_restart=True)
                n += 1
            except Exception:  # noqa: BLE001 - a handle that is already gone
                pass
        if n == kills:
            killed.set()

    try:
        EntityRef(LEDGER, entities[0], resolver).ask(Append("warm", 1), timeout=60)
        history.record("warm", "ok", 1)
        before = dict(coalesce.STATS)
        chaos = threading.Thread(target=killer)
        chaos.start()
        asyncio.run(load())
        chaos.join(60)
        assert killed.is_set()  # every kill hit the host while callers were running
        calls = coalesce.STATS["calls"] - before["calls"]
        commands = coalesce.STATS["commands"] - before["commands"]
        assert calls * 2 <= commands, (calls, commands)  # the kills hit shared calls
        # keyed: every unknown outcome was re-sent under its key and answered in time
        assert history.counts() == {"ok": callers * per_caller + 1}, history.counts()
        stored = asyncio.run(_check(config, history, entities))
        assert sum(map(len, stored.values())) == callers * per_caller + 1
        _in_send_order(stored, sent)

        async def writers() -> set[str]:
            journal = await CassandraJournal.connect(config)
            try:
                return {
                    ev.writer_id
                    for e in entities
                    async for ev in journal.replay(LEDGER.persistence_id(e))
                }
            finally:
                await journal.close()

        assert len(asyncio.run(writers())) >= 3 * 2  # activations ended by the kills
    finally:
        resolver.kill_all()


LEDGER_RAW = dataclasses.replace(LEDGER, idempotency=IdempotencyPolicy(enabled=False))


class _Fixed:
    def __init__(self, handle) -> None:  # noqa: ANN001
        self.handle = handle

    def resolve(self, _type, _entity_id):  # noqa: ANN001
        return self.handle

    def invalidate(self, _type, _entity_id, handle=None) -> None:  # noqa: ANN001
        pass


async def test_a_stuck_call_delays_its_hosts_other_callers_only_by_the_hold_bound(ray_local):
    class _Stuck:
        """A host stand-in: commands for entity "stuck" never return, the others at once."""

        async def _one(self, entity_id, command):  # noqa: ANN001
            if entity_id == "stuck":
                await asyncio.Event().wait()
            return command.op_id

        async def ask_ordered(self, entity_id, caller_id, seq, command):  # noqa: ANN001
            return await self._one(entity_id, command)

        async def ask_batches(self, groups):  # noqa: ANN001
            async def group(entity_id, _caller, _seq, commands):  # noqa: ANN001
                return [await self._one(entity_id, c) for c in commands]

            return await asyncio.gather(*(group(*g) for g in groups))

    actor = ray_local.remote(_Stuck).options(max_concurrency=100).remote()
    try:
        resolver = _Fixed(actor)
        stuck = asyncio.ensure_future(
            EntityRef(LEDGER_RAW, "stuck", resolver).ask_async(Append("s"), timeout=20)
        )
        await asyncio.sleep(0.3)  # its call is in flight and never returns
        for round_ in range(5):
            t0 = time.monotonic()
            replies = await asyncio.gather(
                *(
                    EntityRef(LEDGER_RAW, f"ok{i}", resolver).ask_async(
                        Append(f"{round_}-{i}"), timeout=20
                    )
                    for i in range(20)
                )
            )
            assert replies == [f"{round_}-{i}" for i in range(20)]
            assert time.monotonic() - t0 < 5.0  # not behind the stuck call (20 s)
        assert not stuck.done()
        stuck.cancel()
    finally:
        ray_local.kill(actor)


async def test_coalescing_switched_off_sends_one_call_per_command(config, ray_local, monkeypatch):
    """``RAYSOURCE_COALESCE=0`` (issue 23 item 9): the switch is read from the environment, and
    with it off concurrent calls to one host go out one Ray call per command, each answered."""
    import subprocess
    import sys

    probe = "from raysource.runtime.actors import coalesce; print(coalesce.ENABLED)"
    for value, enabled in (("0", "False"), ("1", "True")):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "RAYSOURCE_COALESCE": value},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == enabled
    monkeypatch.setattr(coalesce, "ENABLED", False)
    resolver = _one_host(config)
    entity = f"nc-{uuid.uuid4().hex[:6]}"
    try:
        ref = EntityRef(LEDGER, entity, resolver)
        await ref.ask_async(Append("warm", 1), timeout=60)
        before = dict(coalesce.STATS)
        replies = await asyncio.gather(
            *(ref.ask_async(Append(f"nc{i}", 1), timeout=60) for i in range(20))
        )
        assert sorted(replies) == list(range(2, 22))  # each reply the balance after its event
        assert coalesce.STATS["calls"] - before["calls"] == 20
        assert coalesce.STATS["commands"] - before["commands"] == 20
    finally:
        resolver.kill_all()
