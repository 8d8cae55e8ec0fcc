"""KV block manager with prefix caching.

The cache holds `num_blocks` blocks of `block_size` token slots. A full block of prompt tokens is identified by a
chained hash, `h_i = xxh3_64(token_ids of block i, seed=h_{i-1})`, with `h_{-1}` derived from the hash seed and
the LoRA adapter (an adapter's KV differs from the base model's). Blocks are reference counted: a block in use by
any sequence is pinned; a block whose count drops to zero joins the free queue but keeps its hash, so a later
request with the same prefix can take it back ("prefix cache hit"). Allocation takes the least recently freed
block; if that block still carried a hash, the hash is evicted from the cache (LRU eviction of free blocks).

Invariant (tested): every block is either in the free queue (ref count 0) or referenced, never both.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from kvroute.simulator.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

_xxh3 = xxhash.xxh3_64_intdigest


def root_hash(hash_seed: int, lora_name: str | None) -> int:
    return _xxh3(f"kvroute/{hash_seed}/{lora_name or ''}".encode())


def chain_hashes(token_ids: Sequence[int], block_size: int, root: int) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (a partial tail block has no hash)."""
    hashes: list[int] = []
    parent = root
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = _xxh3(array("I", token_ids[start : start + block_size]).tobytes(), parent)
        hashes.append(parent)
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, record_events: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.record_events = record_events
        self.events: list[KVEvent] = []

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def match_prefix(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Block ids of the longest cached prefix of `hashes` (at most `max_blocks`)."""
        found: list[int] = []
        cached = self.cached
        for h in hashes[:max_blocks]:
            block = cached.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def acquire(self, blocks: Sequence[int]) -> None:
        """Pin cached blocks for a sequence (a prefix hit)."""
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """Take `count` fresh blocks, evicting the least recently freed; None (and no change) if too few."""
        if count > len(self.free):
            return None
        taken: list[int] = []
        removed: list[int] = []
        for _ in range(count):
            block, _unused = self.free.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:
                if self.cached.get(old) == block:
                    del self.cached[old]
                    removed.append(old)
                self.block_hash[block] = None
            self.ref_counts[block] = 1
            taken.append(block)
        if removed and self.record_events:
            self.events.append(BlockRemoved(tuple(removed)))
        return taken

    def release(self, blocks: Sequence[int]) -> None:
        """Unpin a sequence's blocks; the tail goes to the free queue first, so it is evicted first."""
        for block in reversed(blocks):
            count = self.ref_counts[block] - 1
            self.ref_counts[block] = count
            if count == 0:
                self.free[block] = None

    def register(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        first: int,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """Publish blocks `first..len(hashes)-1` of a sequence as cached."""
        stored: list[int] = []
        size = self.block_size
        for index in range(first, len(hashes)):
            block, h = blocks[index], hashes[index]
            if h in self.cached or self.block_hash[block] is not None:
                continue  # another sequence computed the same block first; this copy stays private
            self.cached[h] = block
            self.block_hash[block] = h
            stored.append(index)
        if stored and self.record_events:
            start, end = stored[0], stored[-1] + 1
            self.events.append(
                BlockStored(
                    block_hashes=tuple(hashes[start:end]),
                    parent_block_hash=hashes[start - 1] if start > 0 else None,
                    token_ids=tuple(token_ids[start * size : end * size]),
                    block_size=size,
                    lora_name=lora_name,
                )
            )

    def clear_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use, so that the AllBlocksCleared
        event never contradicts blocks the engine still holds."""
        if len(self.free) != self.num_blocks:
            return False
        for block in self.free:
            self.block_hash[block] = None
        self.cached.clear()
        if self.record_events:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events
