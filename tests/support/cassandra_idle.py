"""Waiting for a Cassandra node to prove it is idle, instead of sleeping (issue 23, item 5).

"Nothing landed late" may only be asserted once nothing *can* land any more. For a private node
that this test alone talks to: every request the session sent earlier has been decoded before a
probe sent later on the same connection, and once the node's request, mutation, read and Paxos
stages show nothing active or queued (apart from the probe itself) on several probes in a row,
no earlier request is still executing; a serial read of each partition then completes any
Paxos proposal still in progress. Budgets are probe counts, not wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from raysource.journal.cassandra.session import CassandraSession

__all__ = ["settle_partitions", "wait_node_idle"]

STAGES = (
    "Native-Transport-Requests",
    "MutationStage",
    "ReadStage",
    "CounterMutationStage",
    "RequestResponseStage",
    "PaxosRepairStage",
    "ViewMutationStage",
)
PROBE = "SELECT name, active_tasks, pending_tasks FROM system_views.thread_pools"


async def wait_node_idle(
    session: CassandraSession, *, quiet_probes: int = 3, max_probes: int = 2000
) -> int:
    """Probe until ``quiet_probes`` consecutive probes see the node idle; return the probes
    used. Raises ``AssertionError`` (with the busy stages) after ``max_probes``."""
    quiet, busy = 0, {}
    for n in range(1, max_probes + 1):
        rows = await session.select_all(PROBE, prepare=False)
        busy = {}
        for name, active, pending in rows:
            own = 1 if name == "Native-Transport-Requests" else 0  # the probe itself
            if name in STAGES and (active > own or pending > 0):
                busy[name] = (active, pending)
        quiet = 0 if busy else quiet + 1
        if quiet >= quiet_probes:
            return n
        await asyncio.sleep(0.01)
    raise AssertionError(f"the node never became idle in {max_probes} probes: {busy}")


async def settle_partitions(
    session: CassandraSession, keyspace: str, table: str, partitions: Iterable[tuple[str, int]]
) -> None:
    """One serial read per ``(persistence_id, partition_nr)``: completes (or supersedes) any
    Paxos proposal still in progress there."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    for pid, pnr in partitions:
        stmt = SimpleStatement(
            f"SELECT sequence_nr FROM {keyspace}.{table} WHERE persistence_id = %s "
            "AND partition_nr = %s LIMIT 1",
            consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        )
        await session.execute(stmt, (pid, pnr))
