"""The multi-node story, locally: a 3-node Cassandra ring on 127.0.0.1-3 with RF=3.

Writes through the journal at QUORUM (fenced: conditional batches at SERIAL) keep succeeding
with one node stopped, and nothing acknowledged is lost — before, during and after the outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from raysource.devnode.local_node import LocalCassandra
from raysource.devnode.net import port_is_free
from raysource.journal.api import StoredEvent
from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.journal import CassandraJournal

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]

IPS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
TOKENS = ["-9223372036854775808", "-3074457345618258603", "3074457345618258602"]


def _free_on_all(start: int) -> int:
    port = start
    while not all(port_is_free(ip, port) for ip in IPS):
        port += 1
    return port


@pytest.fixture(scope="module")
def ring() -> Iterator[tuple[list[LocalCassandra], int]]:
    storage = _free_on_all(7100)
    native = _free_on_all(9142)
    nodes = [
        LocalCassandra(
            name=f"ring{i + 1}",
            host=ip,
            port=native,
            storage_port=storage,
            heap="512M",
            seeds=f"{IPS[0]}:{storage}",
            cluster_name="raysource-ring",
            initial_token=TOKENS[i],
        )
        for i, ip in enumerate(IPS)
    ]
    for node in nodes:
        node.stop()
    try:
        for node in nodes:  # the seed first; the others join it
            print(node.start().describe(), flush=True)
        _wait_for_ring(native)
        yield nodes, native
    finally:
        for node in nodes:
            node.stop(timeout=15)


def _wait_for_ring(port: int, timeout: float = 90.0) -> None:
    """Until all three nodes are up and agree on the schema (DDL on 2 cores takes a while)."""
    from cassandra.cluster import Cluster

    cluster = Cluster(IPS, port=port, protocol_version=5)
    session = cluster.connect()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            peers = list(session.execute("SELECT peer FROM system.peers"))
            up = [h for h in cluster.metadata.all_hosts() if h.is_up]
            if (
                len(peers) == 2
                and len(up) == 3
                and cluster.control_connection.wait_for_schema_agreement(wait_time=30)
            ):
                return
            time.sleep(0.5)
        raise AssertionError("the 3-node ring did not form / agree on the schema")
    finally:
        cluster.shutdown()


def _events(pid: str, start: int, n: int) -> list[StoredEvent]:
    now = datetime.now(UTC)
    return [
        StoredEvent(pid, seq, f"e{seq}".encode(), "test.E#1", 1, now, "ring-test")
        for seq in range(start, start + n)
    ]


async def _append_round(journal: CassandraJournal, pids: list[str], acked: dict) -> None:
    for pid in pids:
        nxt = await journal.highest_sequence_nr(pid) + 1
        await journal.append(_events(pid, nxt, 3))
        acked[pid] = nxt + 2


async def test_quorum_writes_survive_one_node_down(ring) -> None:
    nodes, port = ring
    config = CassandraConfig(
        contact_points=tuple(IPS),
        port=port,
        keyspace="ring_test",
        replication_factor=3,
        write_consistency="QUORUM",
        read_consistency="QUORUM",
        serial_consistency="SERIAL",
        request_timeout=20.0,
    )
    journal = await CassandraJournal.connect(config, create_schema=True)
    _wait_for_ring(port)
    try:
        pids = [f"ring|entity-{i}" for i in range(20)]
        acked: dict[str, int] = {}
        await _append_round(journal, pids, acked)

        nodes[2].stop(timeout=15)  # one of three replicas gone
        assert not nodes[2].status().running
        await _append_round(journal, pids, acked)  # QUORUM (2 of 3) still answers
        await _append_round(journal, pids, acked)

        for pid in pids:  # every acknowledged event is readable at QUORUM, gap-free
            seqs = [e.sequence_nr async for e in journal.replay(pid)]
            assert seqs == list(range(1, acked[pid] + 1))
            assert await journal.highest_sequence_nr(pid) == acked[pid] == 9

        print(nodes[2].start(fresh=False).describe(), flush=True)  # back on its data
        _wait_for_ring(port)
        for pid in pids:
            assert [e.sequence_nr async for e in journal.replay(pid)] == list(range(1, 10))
    finally:
        await journal.close()
