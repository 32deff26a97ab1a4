"""Zombie hosts on a real Ray cluster (issue 25, "Prove it"), real Cassandra.

A head and one worker node (``ray.cluster_utils.Cluster``, fast health checks). Ledgers are
spread over both; callers in threads keep appending and record every outcome. Then the worker
node's raylet and every process under it (its host actors) are frozen with SIGSTOP until Ray
declares the node dead and every ledger it served answers again from the head. The host
processes are resumed while the raylet stays frozen — cut off from Ray, not from Cassandra:
their event loops go on with the commands they held — and a few seconds later the raylet.

Then the history checker (``raysource.testing.history``) compares what every caller saw with
the journal: nothing acknowledged lost, nothing applied twice, every reply equal to the fold
of the journal after its command, the live state equal to the journal's fold; and no row a
zombie wrote after it was resumed, and after the newer activation of its aggregate recorded its
epoch (its recovery had read the log by then), is in the valid log (what readers see). (A zombie
row that landed earlier may be valid: that recovery read it, and the history agrees.)

With ``guard="off"`` the same run must find problems (so the test bites): a zombie's late
write replaces or duplicates what the new activation acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
from ray_cluster import ray_cluster

from raysource.examples.ledger import LEDGER, Append
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal
from raysource.runtime.aggregate import IdempotencyPolicy
from raysource.runtime.shard_id import shard_of
from raysource.runtime.stores import StoreSpec, serialization_for
from raysource.sharding.coordinator import CoordinatorSettings
from raysource.sharding.system import System
from raysource.testing.history import History, LiveState, check_history, classify

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.ray, pytest.mark.cassandra, pytest.mark.slow, pytest.mark.timeout(300)]

CALLERS = 12
ENTITIES = 8
LEDGER_NO_KEYS = dataclasses.replace(LEDGER, idempotency=IdempotencyPolicy(enabled=False))


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc: no psutil in the core install)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


class Callers:
    """Threads appending to every ledger, recording each outcome in a History."""

    def __init__(self, system: System, ids: list[str], history: History) -> None:
        self.history = history
        self.lock = threading.Lock()
        self.acks: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()
        self.hold: frozenset[str] = frozenset()  # ledgers not called for now
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(system, ids, k), daemon=True)
            for k in range(CALLERS)
        ]

    def _run(self, system: System, ids: list[str], k: int) -> None:
        refs = {e: system.entity(LEDGER_NO_KEYS, e) for e in ids}
        n = 0
        while not self.stop.is_set():
            eid = ids[(k + n) % len(ids)]
            n += 1
            with self.lock:
                if eid in self.hold:
                    continue
                self.inflight[eid] += 1
            cmd = f"{eid}.{k}.{n}"
            try:
                reply, err = refs[eid].ask(Append(cmd, 1 + k), timeout=40), None
            except Exception as exc:  # noqa: BLE001 - every outcome is data
                reply, err = None, exc
            with self.lock:
                self.inflight[eid] -= 1
                self.history.record(cmd, classify(err), err if err is not None else reply, str(k))
                if err is None:
                    self.acks[eid] += 1

    def quiesce(self, ids: list[str], timeout: float = 60.0) -> None:
        """Stop calling ``ids`` and wait until none of their calls is in flight (their hosts
        are idle: every command answered, no write pending)."""
        with self.lock:
            self.hold = frozenset(ids)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if all(self.inflight[e] == 0 for e in ids):
                    return
            assert time.monotonic() < deadline, ("calls never ended", dict(self.inflight))
            time.sleep(0.005)

    def release(self) -> None:
        with self.lock:
            self.hold = frozenset()

    def __enter__(self) -> Callers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


async def _check(cfg: CassandraConfig, pids, history, live, zombie_pids, resumed_us):
    journal = await CassandraJournal.connect(cfg)
    try:
        violations = await check_history(
            history,
            journal,
            aggregate_type=LEDGER_NO_KEYS,
            serialization=serialization_for(LEDGER, StoreSpec()),
            persistence_ids=pids,
            command_of=lambda ev: ev.op_id,
            live=live,
            expected_reply=lambda _cmd, state: state.balance,
            tags=False,
        )
        # rows written by the zombies after they were resumed (their writer ids name their
        # process) and after a newer epoch's record of their aggregate (the new activation's
        # recovery had read the log by then), and which of them readers see. A zombie row
        # that landed before the newer record may be valid: the recovery read it (a ledger
        # that moved to the frozen node during the load, so it was not waited for, was still
        # recovering when the zombies were resumed).
        ks = cfg.keyspace
        late: list[tuple[str, int, str, bytes]] = []
        for pid in pids:
            records = await journal.session.select_all(
                f"SELECT epoch, WRITETIME(start_seq) FROM {ks}.{cfg.epochs_table} "
                f"WHERE persistence_id = ?",
                (pid,),
            )
            rows = await journal.session.select_all(
                f"SELECT sequence_nr, epoch, writer_id, payload, WRITETIME(payload) "
                f"FROM {ks}.{cfg.events_table} WHERE persistence_id = ? AND partition_nr = 0",
                (pid,),
            )
            for seq, epoch, writer, payload, stamp in rows:
                if not any(f"@{p}:" in (writer or "") for p in zombie_pids):
                    continue
                # guard off writes no records: there, every row after the resume counts
                newer = min((at for e, at in records if e > epoch), default=None)
                after_record = not records or (newer is not None and stamp > newer)
                if stamp > resumed_us and after_record:
                    late.append((pid, seq, writer, bytes(payload)))
        visible = []
        for pid, seq, writer, payload in late:
            async for e in journal.replay(pid, seq, seq):
                if e.writer_id == writer and bytes(e.payload) == payload:
                    visible.append((pid, seq, writer, await _around(journal, cfg, pid, seq)))
        return violations, late, visible
    finally:
        await journal.close()


async def _around(journal: CassandraJournal, cfg: CassandraConfig, pid: str, seq: int) -> dict:
    """Diagnostics for a visible zombie row: the rows near it, the epoch records, the fence."""
    ks = cfg.keyspace
    rows = await journal.session.select_all(
        f"SELECT sequence_nr, epoch, writer_id, WRITETIME(payload) FROM {ks}.{cfg.events_table} "
        f"WHERE persistence_id = ? AND partition_nr = 0 AND sequence_nr >= ? AND sequence_nr <= ?",
        (pid, seq - 4, seq + 4),
    )
    records = await journal.session.select_all(
        f"SELECT epoch, start_seq, chain, writer_id, WRITETIME(start_seq) "
        f"FROM {ks}.{cfg.epochs_table} "
        f"WHERE persistence_id = ?",
        (pid,),
    )
    fence = await journal.session.select_all(
        f"SELECT epoch, owner FROM {ks}.{cfg.fence_table} WHERE persistence_id = ?", (pid,)
    )
    return {
        "rows": [tuple(r) for r in rows],
        "records": [tuple(r) for r in records],
        "fence": [tuple(r) for r in fence],
    }


def _zombie_run(cfg: CassandraConfig, ns: str, worker, guard: str) -> dict:
    """One system on the cluster (guard ``guard``); freeze ``worker`` under load, wait until
    Ray declares it dead and its ledgers answer elsewhere, resume the hosts (raylet still
    frozen), then the raylet; check the history. Returns what it found."""
    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - t0, 1)

    system = System.start(
        f"zombie{uuid.uuid4().hex[:6]}",
        store=StoreSpec.for_cassandra(cfg, create_schema=True),
        types=[LEDGER_NO_KEYS],
        namespace=ns,
        coordinator_settings=CoordinatorSettings(poll_interval=0.5, max_moves=4),
    )
    log: list[str] = []
    phase("started")
    try:
        ids = [f"z{guard}{i}" for i in range(ENTITIES)]
        warm = History()

        def first(eid: str) -> None:  # warm up: every host is up and every ledger recovered
            reply = system.entity(LEDGER_NO_KEYS, eid).ask(Append(f"warm-{eid}", 1), timeout=120)
            warm.record(f"warm-{eid}", "ok", reply)

        with ThreadPoolExecutor(len(ids)) as pool:  # the hosts start side by side
            list(pool.map(first, ids))
        homes = {
            eid: ray.get(
                system.coordinator.home.remote("ledger", shard_of(eid, LEDGER.number_of_shards))
            )
            for eid in ids
        }
        phase("warm")
        victims = [e for e in ids if homes[e] == worker.node_id]
        assert victims and len(victims) < len(ids), homes
        raylet = worker.all_processes["raylet"][0].process.pid
        # The ledgers of the node to freeze get three times the traffic. Their hosts are
        # frozen idle (no write in flight) and then called: those commands wait in the frozen
        # processes and run when they are resumed, so each zombie writes after a newer
        # activation recorded its epoch. (A host frozen mid-write only completes that write
        # once resumed, meets the fence and stops: it wrote nothing late, and a run where every
        # host was caught so tested nothing, about 1 in 3.)
        with Callers(system, ids + victims * 2, warm) as callers:
            time.sleep(1.5)
            hosts = _descendants(raylet)
            callers.quiesce(victims)
            _signal([raylet], signal.SIGSTOP)
            _signal(hosts, signal.SIGSTOP)
            frozen_at = time.monotonic()
            callers.release()
            try:
                acked = {e: callers.acks[e] for e in victims}
                deadline = frozen_at + 90
                while _node_alive(worker.node_id):
                    assert time.monotonic() < deadline, "the node never died"
                    time.sleep(0.2)
                log.append(f"node dead after {time.monotonic() - frozen_at:.1f} s")
                while any(callers.acks[e] <= acked[e] + 1 for e in victims):
                    assert time.monotonic() < deadline, ("never moved", dict(callers.acks))
                    time.sleep(0.2)
                log.append(f"served elsewhere after {time.monotonic() - frozen_at:.1f} s")
                resumed_us = time.time_ns() // 1000
                log.append(f"resumed at {resumed_us}")
                _signal(hosts, signal.SIGCONT)  # the zombies run, cut off from Ray
                time.sleep(3.0)
            finally:
                _signal([raylet], signal.SIGCONT)
                _signal(hosts, signal.SIGCONT)
            time.sleep(1.0)
        phase("load")
        live = []
        for eid in ids:
            state = system.entity(LEDGER_NO_KEYS, eid).state(timeout=60)
            live.append(LiveState(LEDGER.persistence_id(eid), state.count, state, "live"))
    finally:
        system.shutdown(timeout=10)
    phase("shutdown")
    pids = [LEDGER.persistence_id(e) for e in ids]
    violations, late, visible = asyncio.run(
        _check(cfg, pids, callers.history, live, [raylet, *hosts], resumed_us)
    )
    phase("checked")
    counts = callers.history.counts()
    print(
        f"guard={guard}: outcomes {dict(counts)}, {len(victims)} of {len(ids)} ledgers on the "
        f"frozen node, {log}, phases {phases}, zombie rows written after resume "
        f"{len(late)}, visible to readers {len(visible)}, "
        f"violations {Counter(v.kind for v in violations)}",
        flush=True,
    )
    return {"counts": counts, "violations": violations, "late": late, "visible": visible}


def test_zombie_hosts_cut_off_from_ray_write_nothing_readers_see(
    cassandra_contact, cassandra_keyspace
) -> None:
    """One cluster, two runs: the epoch guard on worker 1 (no problem may appear), then the
    guard off on worker 2 (problems must appear: the run bites). Keys are off, so a caller
    whose command was caught on the frozen node moves on (outcome unknown) instead of
    re-sending it: the new activation's next acknowledged events take the numbers the zombie
    then writes."""
    host, port = cassandra_contact

    def cfg(guard: str) -> CassandraConfig:
        return CassandraConfig(
            contact_points=(host,), port=port, keyspace=cassandra_keyspace, guard=guard
        )

    t0 = time.monotonic()
    with ray_cluster(2, "zombie") as (_cluster, workers, ns):
        print(f"cluster up after {time.monotonic() - t0:.1f} s", flush=True)
        on = _zombie_run(cfg("epoch"), ns, workers[0], "epoch")
        off = _zombie_run(cfg("off"), ns, workers[1], "off")
    assert on["counts"].get("ok", 0) > 0 and off["counts"].get("ok", 0) > 0
    assert on["late"], "no zombie row landed after a newer epoch's record: nothing was tested"
    assert on["violations"] == [], on["violations"]
    assert on["visible"] == [], on["visible"]
    # without the guard the zombies' late rows replace acknowledged events
    assert off["visible"] and any(v.kind == "lost_ack" for v in off["violations"]), off
