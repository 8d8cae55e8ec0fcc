from __future__ import annotations

import pytest

from kvroute.bench.overhead.memory import measure_index


def test_entries_and_distinct_hashes_are_counted_from_the_index() -> None:
    alone = measure_index(6_500, endpoints=16, owners=1)
    shared = measure_index(6_500, endpoints=16, owners=4)

    # 6,500 // 64 = 101 requests of 64 blocks; with 4 owners, 25 requests each recorded 4 times.
    assert (alone.entries, alone.hashes) == (101 * 64, 101 * 64)
    assert (shared.entries, shared.hashes) == (25 * 64 * 4, 25 * 64)
    assert alone.bytes_per_entry == pytest.approx(alone.bytes_total / alone.entries)


def test_shared_hashes_cost_less_per_entry_and_wide_pools_cost_more() -> None:
    small = measure_index(6_400, endpoints=16, owners=1)
    shared = measure_index(6_400, endpoints=16, owners=4)
    wide = measure_index(6_400, endpoints=1024, owners=1)

    assert 80 < small.bytes_per_entry < 400
    # A shared hash is stored once (one int, one dict slot); only the LRU node is per owner.
    assert shared.bytes_per_entry < small.bytes_per_entry < shared.bytes_per_hash
    # Endpoint bitmasks are ints as wide as the highest slot they hold.
    assert wide.bytes_per_entry > small.bytes_per_entry


def test_owners_must_fit_the_endpoints() -> None:
    with pytest.raises(ValueError, match="owners must be between 1 and the number of endpoints"):
        measure_index(1_000, endpoints=2, owners=3)
