"""Crypto-shredding benchmark: the cost of personal fields per event (encode + decode).

The same event twice, in one run: ``SeatReserved`` of the example (a customer's name and a
guest's name, two subjects, two AES-256-GCM seals) beside a twin class without the personal
marks (the plain path). Both go through ``Serialization.encode`` + ``decode``; keys are warm in
the key ring's cache (the steady state). Figures are process CPU time per event (the machine is
shared, CPU time is what the work costs), best of three. With ``--contact``, also the cold path
on the Cassandra key store: the first event of a new subject (a key created by a lightweight
transaction) and a reader's first decode of it (one key read), wall time per subject.

Usage: python -m benchmarks.personal_bench [--n 20000] [--contact host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from raysource.examples.seats import SeatReserved
from raysource.journal.serialization import Serialization


@dataclass(frozen=True)
class PlainSeatReserved:
    """The example event without personal marks (the same fields and values)."""

    seat: str
    customer: str
    name: str = ""
    guest: str = ""
    guest_name: str = ""


def _cpu_us(fn, n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e6


def warm(n: int) -> dict[str, float]:
    ser = Serialization()
    ser.register(SeatReserved, "bench.SeatReserved")
    ser.register(PlainSeatReserved, "bench.PlainSeatReserved")
    args = ("A1", "alice", "Alice Martin", "bob", "Bob Durand")
    personal, plain = SeatReserved(*args), PlainSeatReserved(*args)
    sp, pp = ser.encode(personal), ser.encode(plain)

    def both(obj, stored):
        return lambda: (ser.encode(obj), ser.decode(*stored))

    return {
        "plain: encode": _cpu_us(lambda: ser.encode(plain), n),
        "plain: decode": _cpu_us(lambda: ser.decode(*pp), n),
        "plain: encode + decode": _cpu_us(both(plain, pp), n),
        "personal: encode": _cpu_us(lambda: ser.encode(personal), n),
        "personal: decode": _cpu_us(lambda: ser.decode(*sp), n),
        "personal: encode + decode": _cpu_us(both(personal, sp), n),
    }


async def cold(contact: str, subjects: int) -> dict[str, float]:
    from raysource.journal.cassandra.config import CassandraConfig
    from raysource.journal.cassandra.keystore import CassandraKeyStore, key_ring
    from raysource.journal.cassandra.session import CassandraSession

    ks = f"bench_personal_{uuid.uuid4().hex[:8]}"
    config = CassandraConfig.from_contact(contact, keyspace=ks)
    session = await CassandraSession.open(config)
    try:
        await session.execute(  # only the key store's tables: a fresh keyspace stays cheap
            f"CREATE KEYSPACE {ks} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            prepare=False,
            timeout=120.0,
        )
        writer = Serialization(keys=key_ring(config, session))
        writer.register(SeatReserved, "bench.SeatReserved")
        reader = Serialization(keys=key_ring(config, session))
        reader.register(SeatReserved, "bench.SeatReserved")
        CassandraKeyStore(config, session).create_tables()
        events = [SeatReserved("A1", f"c{i}", "Name") for i in range(subjects)]

        def first_writes() -> list:
            return [writer.encode(e) for e in events]

        t0 = time.perf_counter()
        stored = await asyncio.to_thread(first_writes)
        create_ms = (time.perf_counter() - t0) / subjects * 1e3
        t0 = time.perf_counter()
        await asyncio.to_thread(lambda: [reader.decode(*s) for s in stored])
        read_ms = (time.perf_counter() - t0) / subjects * 1e3
        return {"new subject: first encode (key created)": create_ms, "first decode": read_ms}
    finally:
        await session.execute(f"DROP KEYSPACE IF EXISTS {ks}", prepare=False, timeout=120.0)
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--contact", default=None, help="host:port: also the cold key path")
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    rows = warm(args.n)
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:<{width}}  {us:7.2f} us CPU")
    ratio = rows["personal: encode + decode"] / rows["plain: encode + decode"]
    extra = rows["personal: encode + decode"] - rows["plain: encode + decode"]
    print(f"personal / plain (encode + decode) = x{ratio:.2f} (+{extra:.1f} us CPU per event)")
    result: dict = {"us_cpu_per_event": rows, "personal_over_plain": ratio}
    if args.contact:
        c = asyncio.run(cold(args.contact, args.subjects))
        for name, ms in c.items():
            print(f"cold, Cassandra key store: {name:<40} {ms:7.2f} ms wall per subject")
        result["cold_ms_per_subject"] = c
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
