"""The epoch chain's pure rules (``raysource.journal.cassandra.epochs``): which epoch owns a
sequence number, empty segments dropped, where an append may start."""

import pytest

from raysource.journal.cassandra.epochs import LEGACY_CHAIN, View, check_next, compact
from raysource.journal.errors import ConcurrentWriteError, InvalidAppendError


def test_segments_own_their_ranges_and_the_last_ends_at_h():
    v = View(((0, 1), (3, 5), (7, 9)), h=11, head=7)
    assert [v.valid(n, 0) for n in (1, 4, 5)] == [True, True, False]
    assert [v.valid(n, 3) for n in (4, 5, 8, 9)] == [False, True, True, False]
    assert [v.valid(n, 7) for n in (8, 9, 11, 12)] == [False, True, True, False]
    assert not v.valid(6, 5)  # an epoch outside the chain (fenced or void) owns nothing


def test_without_records_every_epoch_0_row_is_valid():
    v = View(LEGACY_CHAIN, h=-1)
    assert v.valid(1, 0) and v.valid(10**9, 0) and not v.valid(3, 1)


def test_compact_drops_empty_segments():
    assert compact([(0, 1), (1, 1), (2, 4), (3, 4), (4, 4)]) == [(1, 1), (4, 4)]
    assert compact([(0, 1), (2, 3), (5, 3)]) == [(0, 1), (5, 3)]
    assert compact([(1, 1), (2, 6)]) == [(1, 1), (2, 6)]


def test_an_append_starts_right_after_the_valid_log():
    check_next("p", 4, 5)
    with pytest.raises(ConcurrentWriteError) as ei:
        check_next("p", 4, 3)
    assert ei.value.sequence_nr == 3
    with pytest.raises(InvalidAppendError):
        check_next("p", 4, 7)
