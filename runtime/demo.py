"""``raysource demo``: the main job.

Until the aggregate runtime lands this is a smoke job: it gets Cassandra (explicit contact
point, a running local node, Docker, or a node started from Maven jars), writes and reads rows
through the driver, and prints what it did and how fast.
"""

from __future__ import annotations

import time
import uuid

from journal.local_node import select_cassandra


def run_demo(seconds: float = 20.0, contact: str | None = None, keep: bool = False) -> int:
    from cassandra.cluster import Cluster

    source = select_cassandra(contact, stop_started_node=not keep, say=print)
    try:
        cluster = Cluster([source.host], port=source.port, protocol_version=5)
        session = cluster.connect()
        ks = "raysource_demo"
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(f"CREATE TABLE IF NOT EXISTS {ks}.smoke (id uuid PRIMARY KEY, n int)")
        insert = session.prepare(f"INSERT INTO {ks}.smoke (id, n) VALUES (?, ?)")
        n, ids, t0 = 1000, [uuid.uuid4() for _ in range(1000)], time.perf_counter()
        futures = [session.execute_async(insert, (ids[i], i)) for i in range(n)]
        for f in futures:
            f.result()
        took = time.perf_counter() - t0
        select = session.prepare(f"SELECT n FROM {ks}.smoke WHERE id = ?")
        ok = sum(1 for i in range(0, n, 50) if session.execute(select, (ids[i],)).one().n == i)
        print(f"smoke: wrote {n} rows in {took:.2f} s ({n / took:,.0f} rows/s), "
              f"read back {ok}/{n // 50} sampled rows correctly")
        cluster.shutdown()
    finally:
        source.release()
    return 0
