"""The precise index, driven with KV events as an engine would publish them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import xxhash

from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored
from kvroute.router.plugins.prefix.precise_index import PreciseIndex
from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key

MODEL = "m"
B = 4  # tokens per block
TOKENS = list(range(1, 25))  # six full blocks
KEYS = chain_keys(TOKENS, B, root_key(MODEL))

EngineHash = Callable[[int, list[int]], int]


def sha_engine(seed: int) -> EngineHash:
    """An engine hashing like vLLM's sha256 mode, with its own seed."""

    def block(parent: int, tokens: list[int]) -> int:
        digest = hashlib.sha256(f"{seed}/{parent}/{tokens}".encode()).digest()
        return int.from_bytes(digest[-8:], "big")

    return block


def xxh_engine(seed: int) -> EngineHash:
    def block(parent: int, tokens: list[int]) -> int:
        return xxhash.xxh64_intdigest(repr(tokens).encode(), seed=parent ^ seed)

    return block


def engine_hashes(engine: EngineHash, tokens: list[int]) -> list[int]:
    hashes, parent = [], 0
    for start in range(0, len(tokens) - B + 1, B):
        parent = engine(parent, tokens[start : start + B])
        hashes.append(parent)
    return hashes


def stored(hashes: list[int], first: int, count: int, parent: int | None = None, **fields: object) -> BlockStored:
    """BlockStored of blocks `first..first+count-1` of TOKENS."""
    tokens = tuple(TOKENS[first * B : (first + count) * B])
    return BlockStored(tuple(hashes[first : first + count]), parent, tokens, B, **fields)  # type: ignore[arg-type]


def test_blocks_chained_across_messages_match_the_request_keys_whatever_the_engine_seed() -> None:
    index = PreciseIndex()
    for endpoint, engine in (("a:1", sha_engine(0)), ("b:1", sha_engine(12345)), ("c:1", xxh_engine(7))):
        hashes = engine_hashes(engine, TOKENS)
        index.apply(endpoint, MODEL, [stored(hashes, 0, 2)], now=0.0)
        index.apply(endpoint, MODEL, [stored(hashes, 2, 3, parent=hashes[1])], now=0.0)

    assert engine_hashes(sha_engine(0), TOKENS) != engine_hashes(sha_engine(12345), TOKENS)
    assert index.match(KEYS, ["a:1", "b:1", "c:1", "d:1"], now=0.0) == {"a:1": 5, "b:1": 5, "c:1": 5}
    assert index.block_size_of("a:1") == B
    assert index.block_size_of("d:1") is None


def test_a_block_whose_parent_was_never_seen_is_skipped_and_counted() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)

    assert index.apply("a:1", MODEL, [stored(hashes, 2, 2, parent=hashes[1])], now=0.0) == 2
    assert index.entries == 0
    assert index.match(KEYS, ["a:1"], now=0.0) == {}


def test_removing_a_block_ends_the_match_there() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 6)], now=0.0)
    index.apply("a:1", MODEL, [BlockRemoved((hashes[3], 999))], now=0.0)

    assert index.match(KEYS, ["a:1"], now=0.0) == {"a:1": 3}
    assert index.blocks_of("a:1") == 5


def test_a_key_stays_until_no_engine_block_of_the_endpoint_maps_to_it() -> None:
    index = PreciseIndex()
    one = engine_hashes(sha_engine(0), TOKENS)
    other = engine_hashes(sha_engine(1), TOKENS)  # the same prefix under other engine hashes (e.g. a cache salt)
    index.apply("a:1", MODEL, [stored(one, 0, 2), stored(other, 0, 2)], now=0.0)

    index.apply("a:1", MODEL, [BlockRemoved(tuple(one[:2]))], now=0.0)
    assert index.match(KEYS, ["a:1"], now=0.0) == {"a:1": 2}
    index.apply("a:1", MODEL, [BlockRemoved(tuple(other[:2]))], now=0.0)
    assert index.match(KEYS, ["a:1"], now=0.0) == {}
    assert len(index) == 0


def test_all_blocks_cleared_drops_only_that_endpoint() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 3)], now=0.0)
    index.apply("b:1", MODEL, [stored(hashes, 0, 2)], now=0.0)
    index.add_speculative("a:1", KEYS, expires=10.0)

    index.apply("a:1", MODEL, [AllBlocksCleared()], now=0.0)

    assert index.match(KEYS, ["a:1", "b:1"], now=0.0) == {"b:1": 2}
    assert index.entries == 2


def test_other_cache_tiers_are_ignored() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 2, medium="CPU"), stored(hashes, 0, 3, medium="GPU")], now=0.0)
    index.apply("a:1", MODEL, [BlockRemoved((hashes[0],), "CPU")], now=0.0)

    assert index.match(KEYS, ["a:1"], now=0.0) == {"a:1": 3}


def test_an_adapter_roots_its_chain_at_its_name() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 2, lora_id=1, lora_name="sql")], now=0.0)

    assert index.match(chain_keys(TOKENS, B, root_key("sql")), ["a:1"], now=0.0) == {"a:1": 2}
    assert index.match(KEYS, ["a:1"], now=0.0) == {}
    # Known only by number, an adapter's root cannot be named: the blocks are skipped.
    assert index.apply("b:1", MODEL, [stored(hashes, 0, 2, lora_id=1)], now=0.0) == 2


def test_each_endpoint_keeps_its_capacity_the_tail_of_a_sequence_going_first() -> None:
    index = PreciseIndex(default_capacity=4)
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 6)], now=0.0)

    assert index.blocks_of("a:1") == 4
    assert index.match(KEYS, ["a:1"], now=0.0) == {"a:1": 4}
    index.set_capacity("a:1", 2)
    assert index.match(KEYS, ["a:1"], now=0.0) == {"a:1": 2}
    assert index.entries == 2


def test_the_global_cap_is_taken_from_the_largest_endpoint() -> None:
    index = PreciseIndex(max_entries=7)
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 5)], now=0.0)
    index.apply("b:1", MODEL, [stored(hashes, 0, 4)], now=0.0)

    assert (index.blocks_of("a:1"), index.blocks_of("b:1")) == (3, 4)
    assert index.entries == 7


def test_speculative_entries_expire_unless_events_confirm_them() -> None:
    index = PreciseIndex()
    index.add_speculative("a:1", KEYS[:3], expires=2.0)
    index.add_speculative("b:1", KEYS[:3], expires=2.0)
    assert index.entries == 6

    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 2)], now=1.0)  # replaces two of a's three by real entries
    assert index.entries == 6
    assert index.match(KEYS, ["a:1", "b:1"], now=1.9) == {"a:1": 3, "b:1": 3}

    assert index.match(KEYS, ["a:1", "b:1"], now=2.0) == {"a:1": 2}
    assert index.entries == 2


def test_a_refreshed_speculative_entry_lives_to_its_new_expiry() -> None:
    index = PreciseIndex()
    index.add_speculative("a:1", KEYS[:1], expires=2.0)
    index.add_speculative("a:1", KEYS[:1], expires=3.0)

    assert index.match(KEYS, ["a:1"], now=2.5) == {"a:1": 1}
    assert index.match(KEYS, ["a:1"], now=3.0) == {}
    assert index.entries == 0


def test_a_removed_endpoint_is_forgotten() -> None:
    index = PreciseIndex()
    hashes = engine_hashes(sha_engine(0), TOKENS)
    index.apply("a:1", MODEL, [stored(hashes, 0, 3)], now=0.0)
    index.add_speculative("a:1", KEYS[3:5], expires=5.0)

    index.remove_endpoint("a:1")

    assert index.entries == 0
    assert len(index) == 0
    assert index.block_size_of("a:1") is None
    assert index.match(KEYS, ["a:1"], now=0.0) == {}
