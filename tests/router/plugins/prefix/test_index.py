import random
import tracemalloc

from kvroute.router.plugins.prefix.index import EndpointSlots, PrefixIndex, longest_runs

CHAIN = [101, 102, 103, 104, 105]


def test_match_counts_consecutive_blocks_per_endpoint() -> None:
    index = PrefixIndex()
    index.record("A", CHAIN[:4], capacity=100)
    index.record("B", CHAIN[:2], capacity=100)
    index.record("C", CHAIN[:1], capacity=100)
    index.record("D", [201, 202], capacity=100)
    assert index.match(CHAIN, ["A", "B", "C", "D", "E"]) == {"A": 4, "B": 2, "C": 1}


def test_an_endpoint_holding_every_block_matches_all() -> None:
    index = PrefixIndex()
    for endpoint in "ABC":
        index.record(endpoint, CHAIN, capacity=100)
    assert index.match(CHAIN, "ABC") == {"A": 5, "B": 5, "C": 5}


def test_a_missing_block_ends_the_match() -> None:
    index = PrefixIndex()
    index.record("A", [CHAIN[0], CHAIN[2], CHAIN[3]], capacity=100)
    assert index.match(CHAIN, ["A"]) == {"A": 1}


def test_only_candidates_are_matched() -> None:
    index = PrefixIndex()
    index.record("A", CHAIN, capacity=100)
    index.record("B", CHAIN[:3], capacity=100)
    assert index.match(CHAIN, ["B"]) == {"B": 3}
    assert index.match(CHAIN, []) == {}
    assert index.match([], ["A"]) == {}


def test_eviction_drops_the_oldest_hash_and_its_bit() -> None:
    index = PrefixIndex()
    index.record("A", CHAIN[:3], capacity=3)
    index.record("B", CHAIN[:3], capacity=3)
    index.record("A", [999], capacity=3)
    # A recorded the chain head last, so its tail (103) went first.
    assert index.hashes_of("A") == 3
    assert index.match(CHAIN, ["A", "B"]) == {"A": 2, "B": 3}
    assert len(index) == 4  # 101, 102, 103 (still B's), 999
    index.record("B", [998], capacity=3)
    assert len(index) == 4  # 103 left with B's bit: 101, 102, 999, 998


def test_recording_again_refreshes_a_hash() -> None:
    index = PrefixIndex()
    index.record("A", [1, 2], capacity=2)
    index.record("A", [2], capacity=2)  # 2 most recent, 1 oldest
    index.record("A", [3], capacity=2)
    assert index.match([2], ["A"]) == {"A": 1}
    assert index.match([1], ["A"]) == {}


def test_a_smaller_capacity_trims_at_the_next_record() -> None:
    index = PrefixIndex()
    index.record("A", CHAIN, capacity=100)
    index.record("A", CHAIN[:1], capacity=2)
    assert index.hashes_of("A") == 2
    assert index.match(CHAIN, ["A"]) == {"A": 2}


def test_removing_an_endpoint_purges_it() -> None:
    index = PrefixIndex()
    index.record("A", CHAIN, capacity=100)
    index.record("B", CHAIN[:2], capacity=100)
    index.remove("A")
    assert index.match(CHAIN, ["A", "B"]) == {"B": 2}
    assert len(index) == 2
    assert index.hashes_of("A") == 0
    index.remove("A")  # idempotent
    index.record("E", CHAIN[:1], capacity=100)
    assert index.match(CHAIN, ["A", "B", "E"]) == {"B": 2, "E": 1}


def test_slots_are_reused_lowest_first() -> None:
    slots = EndpointSlots()
    assert [slots.acquire(e) for e in "ABC"] == [1, 2, 4]
    assert slots.acquire("B") == 2
    assert slots.release("B") == 2
    assert slots.release("A") == 1
    assert slots.release("A") == 0
    assert [slots.acquire(e) for e in "DEF"] == [1, 2, 8]
    assert slots.members(1 | 4 | 8) == ["D", "C", "F"]
    assert slots.members(0) == []
    assert slots.mask(["C", "X"]) == 4


def test_the_candidate_mask_follows_slot_changes() -> None:
    slots = EndpointSlots()
    slots.acquire("A")
    assert slots.mask(["A", "B"]) == 1
    slots.acquire("B")
    assert slots.mask(["A", "B"]) == 3
    slots.release("A")
    assert slots.mask(["A", "B"]) == 2


def test_members_decode_every_slot_of_a_wide_mask() -> None:
    slots = EndpointSlots()
    ids = [f"e{i}" for i in range(300)]
    for endpoint_id in ids:
        slots.acquire(endpoint_id)
    assert slots.members(slots.mask(ids)) == ids
    assert slots.members((1 << 299) | (1 << 8) | 1) == ["e0", "e8", "e299"]


def test_longest_runs_on_a_plain_owner_map() -> None:
    slots = EndpointSlots()
    a, b = slots.acquire("A"), slots.acquire("B")
    owners = {1: a | b, 2: a | b, 3: a}
    assert longest_runs([1, 2, 3, 4], owners, a | b, slots) == {"A": 3, "B": 2}
    assert longest_runs([1, 2, 3], owners, a | b, slots) == {"A": 3, "B": 2}
    assert longest_runs([9, 1], owners, a | b, slots) == {}


def test_memory_is_bounded_by_the_capacities() -> None:
    rng = random.Random(7)
    index = PrefixIndex()
    endpoints = [f"10.0.0.{i}:8000" for i in range(8)]

    def insert(n: int) -> None:
        for _ in range(n):
            start = rng.getrandbits(60)
            index.record(rng.choice(endpoints), [start, start + 1, start + 2, start + 3], capacity=1000)

    tracemalloc.start()
    try:
        insert(5_000)  # every LRU full
        warm, _ = tracemalloc.get_traced_memory()
        insert(25_000)  # 100,000 more hashes
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(index.hashes_of(e) == 1000 for e in endpoints)
    assert len(index) <= 8 * 1000
    assert after - warm < 100_000  # bytes: steady state, not growth with the 100k hashes
