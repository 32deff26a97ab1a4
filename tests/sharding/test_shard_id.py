"""shard_of: stable across processes and runs, in range, evenly spread. No Ray."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from unit_guard import no_ray  # noqa: F401  (autouse: these tests must not start Ray)

from raysource.journal.errors import ConfigError
from raysource.runtime.shard_id import shard_of


def _reference(entity_id: str, n: int) -> int:
    # Independent restatement of the documented definition.
    h = hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8)
    return int(h.hexdigest(), 16) % n


# Literal values pin the definition: if these change, stored entities would move shards.
FIXED = [("alice", 100, 29), ("seat-1", 1000, 652), ("", 7, 0), ("Zürich/Ω", 64, 44)]


@pytest.mark.parametrize(("entity_id", "n", "expected"), FIXED)
def test_fixed_vectors(entity_id: str, n: int, expected: int) -> None:
    assert shard_of(entity_id, n) == _reference(entity_id, n) == expected


@given(st.text(), st.integers(min_value=1, max_value=10_000))
def test_matches_definition_and_range(entity_id: str, n: int) -> None:
    s = shard_of(entity_id, n)
    assert 0 <= s < n
    assert s == _reference(entity_id, n)


def test_same_in_another_process_with_another_hash_seed() -> None:
    ids = [f"entity-{i}" for i in range(50)]
    code = (
        "import sys; from raysource.runtime.shard_id import shard_of; "
        f"print([shard_of(i, 97) for i in {ids!r}])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == str([shard_of(i, 97) for i in ids])


def test_distribution_is_even() -> None:
    n, per = 32, 1000
    counts = Counter(shard_of(f"user-{i}", n) for i in range(n * per))
    assert len(counts) == n
    # binomial sd ~ sqrt(1000) ~ 31.6; 6 sd is far beyond chance for 32 buckets
    assert all(abs(c - per) < 190 for c in counts.values()), counts


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "3"])
def test_bad_shard_count(n) -> None:
    with pytest.raises(ConfigError):
        shard_of("x", n)


def test_bad_entity_id() -> None:
    with pytest.raises(ConfigError):
        shard_of(42, 10)  # type: ignore[arg-type]
