from __future__ import annotations

import struct

import pytest
import xxhash

from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key, token_bytes


def test_the_chain_is_xxh3_of_little_endian_u32_tokens_seeded_by_the_previous_key() -> None:
    tokens = list(range(100, 140))  # 40 tokens: two full blocks of 16, 8 left over
    root = xxhash.xxh3_64_intdigest(b"meta-llama/Llama-3.1-8B-Instruct")
    first = xxhash.xxh3_64_intdigest(struct.pack("<16I", *tokens[:16]), seed=root)
    second = xxhash.xxh3_64_intdigest(struct.pack("<16I", *tokens[16:32]), seed=first)

    assert root_key("meta-llama/Llama-3.1-8B-Instruct") == root
    assert chain_keys(tokens, 16, root) == [first, second]


def test_keys_stand_for_whole_prefixes() -> None:
    root = root_key("m")
    base = list(range(64))

    assert chain_keys(base[:48], 16, root) == chain_keys(base, 16, root)[:3]
    assert chain_keys(base, 16, root, max_blocks=2) == chain_keys(base, 16, root)[:2]
    changed = [*base[:20], 9999, *base[21:]]  # a different token in the second block
    assert chain_keys(changed, 16, root)[0] == chain_keys(base, 16, root)[0]
    assert chain_keys(changed, 16, root)[1:] != chain_keys(base, 16, root)[1:]
    assert chain_keys(base, 16, root_key("other-model")) != chain_keys(base, 16, root)


def test_only_full_blocks_have_keys() -> None:
    assert chain_keys(list(range(15)), 16, 7) == []
    assert len(chain_keys(list(range(16)), 16, 7)) == 1


def test_token_ids_beyond_32_bits_cannot_be_keyed() -> None:
    with pytest.raises(OverflowError):
        token_bytes([1 << 32])
    with pytest.raises(ValueError, match="block_size must be positive"):
        chain_keys([1, 2], 0, 7)
