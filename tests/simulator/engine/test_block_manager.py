from __future__ import annotations

import pytest

from kvroute.simulator.engine.block_manager import BlockManager, chain_hashes, root_hash
from kvroute.simulator.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored


def test_chain_hashes_cover_full_blocks_and_depend_on_the_whole_prefix() -> None:
    root = root_hash(0, None)
    a = chain_hashes(list(range(40)), 16, root)
    b = chain_hashes([99, *range(1, 40)], 16, root)
    assert len(a) == 2  # 40 tokens = 2 full blocks + a partial tail
    assert a[0] != b[0] and a[1] != b[1]  # changing token 0 changes every later hash
    assert chain_hashes(list(range(32)), 16, root) == a
    assert chain_hashes(list(range(32)), 16, root_hash(0, "adapter")) != a
    assert chain_hashes(list(range(32)), 16, root_hash(1, None)) != a


def test_allocate_release_and_prefix_reuse() -> None:
    manager = BlockManager(4, 2, record_events=True)
    hashes = chain_hashes([1, 2, 3, 4], 2, 7)
    blocks = manager.allocate(2)
    assert blocks is not None and manager.num_free == 2
    manager.register(blocks, hashes, 0, [1, 2, 3, 4], None)
    manager.release(blocks)
    assert manager.num_free == 4 and manager.usage == 0.0
    assert manager.match_prefix(hashes, 10) == blocks
    assert manager.match_prefix(hashes, 1) == blocks[:1]
    (stored,) = manager.drain_events()
    assert stored == BlockStored(tuple(hashes), None, (1, 2, 3, 4), 2, None)


def test_least_recently_freed_block_is_evicted_first_and_reported() -> None:
    manager = BlockManager(2, 1, record_events=True)
    first = manager.allocate(1)
    second = manager.allocate(1)
    assert first is not None and second is not None
    manager.register(first, [11], 0, [1], None)
    manager.register(second, [22], 0, [2], None)
    manager.release(first)
    manager.release(second)
    manager.drain_events()
    assert manager.allocate(1) == first  # freed earliest
    assert manager.match_prefix([11], 1) == []
    assert manager.match_prefix([22], 1) == second
    assert manager.drain_events() == [BlockRemoved((11,))]


def test_allocation_beyond_capacity_changes_nothing() -> None:
    manager = BlockManager(3, 4)
    assert manager.allocate(4) is None
    assert manager.num_free == 3


def test_clear_cache_is_refused_while_blocks_are_in_use() -> None:
    manager = BlockManager(2, 1, record_events=True)
    held = manager.allocate(1)
    freed = manager.allocate(1)
    assert held is not None and freed is not None
    manager.register(held, [1], 0, [1], None)
    manager.register(freed, [2], 0, [2], None)
    manager.release(freed)
    manager.drain_events()
    assert manager.clear_cache() is False
    assert manager.match_prefix([2], 1) == freed
    assert manager.drain_events() == []
    manager.release(held)
    assert manager.clear_cache() is True
    assert manager.match_prefix([1], 1) == [] and manager.match_prefix([2], 1) == []
    assert manager.drain_events() == [AllBlocksCleared()]


def test_invalid_geometry_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        BlockManager(0, 16)
