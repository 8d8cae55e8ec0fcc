"""Request keys: the router's own chained hashes of full token blocks, for the precise prefix index.

The engine's block hashes depend on its hash algorithm and seed (vLLM: `--prefix-caching-hash-algo`,
`PYTHONHASHSEED`), which the router neither knows nor needs. From the token ids it computes its own key per FULL
block of `block_size` tokens, chained from a root that names the model (a LoRA adapter's name replaces it, since
an adapter's KV differs from the base model's):

    root    = xxh3_64(utf8(model or adapter name))
    key_0   = xxh3_64(le_u32(tokens[0 : B]), seed=root)
    key_i   = xxh3_64(le_u32(tokens[i*B : (i+1)*B]), seed=key_{i-1})

so `key_i` stands for the whole prefix `tokens[0 : (i+1)*B]` of that model, whatever engine cached it. A partial
tail block has no key (engines cache full blocks only). The same function keys a request's prompt and the blocks a
`BlockStored` event reports (chained from the key its parent block was given), so the two meet exactly when the
engine holds the prompt's prefix.

Cost: one encode of the token list to bytes, then one xxh3 call per block on a slice (about 0.3 µs per block).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

import xxhash

_xxh3 = xxhash.xxh3_64_intdigest

# Four bytes per token id ("I" is 32 bits wide on every platform CPython supports), little-endian whatever the
# machine, so keys are the same on every router.
_TOKEN_TYPECODE = "I"
_TOKEN_BYTES = 4
_SWAP = sys.byteorder != "little"


def root_key(model: str) -> int:
    """The key the chain of `model` (a base model's name, or an adapter's) starts from."""
    return _xxh3(model.encode("utf-8", "surrogatepass"))


def token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian unsigned 32-bit integers; raises `OverflowError` for an id out of that range."""
    packed = array(_TOKEN_TYPECODE, token_ids)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def chain_keys(token_ids: Sequence[int], block_size: int, parent: int, max_blocks: int | None = None) -> list[int]:
    """The keys of the full blocks of `token_ids` (at most `max_blocks` of them), chained from `parent`."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks = len(token_ids) // block_size
    if max_blocks is not None:
        blocks = min(blocks, max_blocks)
    if blocks <= 0:
        return []
    step = block_size * _TOKEN_BYTES
    data = token_bytes(token_ids[: blocks * block_size])
    keys: list[int] = []
    key = parent
    for start in range(0, blocks * step, step):
        key = _xxh3(data[start : start + step], key)
        keys.append(key)
    return keys
