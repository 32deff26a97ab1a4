"""Serialization benchmark: raysource's encode/decode of a typical event beside raw msgspec.

Encode is ``Serialization.encode`` (msgspec encode plus the write-time round-trip check: a typed
decode and a strict structural comparison); its limit is a bare ``msgspec.json.encode``. Decode
is ``Serialization.decode`` (a per-class typed decoder built once per process); its peer is the
``msgspec.convert(msgspec.json.decode(b), cls)`` path it replaced, and its limit a bare typed
``msgspec.json.Decoder``. All figures come from one run (2 shared cores: read the ratios).

Usage: python -m benchmarks.serialization_bench [--n 20000]
"""

from __future__ import annotations

import argparse
import enum
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from raysource.journal.serialization import Serialization


class Kind(enum.Enum):
    ADULT = "adult"
    CHILD = "child"


@dataclass(frozen=True)
class Seat:
    row: str
    number: int


@dataclass(frozen=True)
class SeatReserved:
    seat: Seat
    customer: str
    kind: Kind
    price: Decimal
    at: datetime
    booking: uuid.UUID
    note: str | None = None
    history: tuple[Seat, ...] = ()
    extras: dict[str, int] = field(default_factory=dict)


def sample() -> SeatReserved:
    return SeatReserved(
        Seat("A", 12),
        "alice",
        Kind.ADULT,
        Decimal("42.50"),
        datetime(2026, 12, 1, 20, 0, tzinfo=UTC),
        uuid.UUID(int=7),
        history=(Seat("B", 1), Seat("B", 2)),
        extras={"popcorn": 2},
    )


def _per_call_us(fn, n: int) -> float:
    for _ in range(min(n, 500)):
        fn()
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def run(n: int) -> dict[str, float]:
    ser = Serialization()
    ser.register(SeatReserved, "bench.SeatReserved")
    ser.register(Seat, "bench.Seat")
    ev = sample()
    sid, manifest, payload = ser.encode(ev)
    typed = msgspec.json.Decoder(SeatReserved)
    plain = msgspec.json.Decoder()
    enc = msgspec.json.Encoder()
    rows = {
        "encode: raw msgspec.json.encode (limit)": _per_call_us(lambda: enc.encode(ev), n),
        "encode: Serialization.encode (checked)": _per_call_us(lambda: ser.encode(ev), n),
        "decode: raw typed msgspec Decoder (limit)": _per_call_us(lambda: typed.decode(payload), n),
        "decode: msgspec.convert(decode(b)) (old path)": _per_call_us(
            lambda: msgspec.convert(plain.decode(payload), SeatReserved, str_keys=True), n
        ),
        "decode: Serialization.decode": _per_call_us(lambda: ser.decode(sid, manifest, payload), n),
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    rows = run(args.n)
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:<{width}}  {us:7.2f} us")
    enc_ratio = (
        rows["encode: Serialization.encode (checked)"]
        / rows["encode: raw msgspec.json.encode (limit)"]
    )
    dec_ratio = (
        rows["decode: Serialization.decode"] / rows["decode: msgspec.convert(decode(b)) (old path)"]
    )
    print(
        f"checked encode / raw encode = {enc_ratio:.1f}x; "
        f"decode / old convert path = {dec_ratio:.2f}x"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "us_per_call": rows,
                    "encode_over_raw": enc_ratio,
                    "decode_over_old_path": dec_ratio,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
