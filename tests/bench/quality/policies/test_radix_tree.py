from __future__ import annotations

import pytest

from kvroute.bench.quality.policies.radix_tree import RadixTree, common_prefix_length


@pytest.mark.parametrize(
    ("a", "b", "length"), [("", "abc", 0), ("abc", "abc", 3), ("abcd", "abxd", 2), ("ab", "abcdef", 2), ("x", "y", 0)]
)
def test_common_prefix_length(a: str, b: str, length: int) -> None:
    assert common_prefix_length(a, b) == length


def test_match_counts_characters_down_to_a_partial_edge_and_names_its_tenant() -> None:
    tree = RadixTree()
    tree.insert("hello world", "w1", now=1.0)
    tree.insert("hello there", "w2", now=2.0)
    assert tree.prefix_match("hello world!", now=3.0) == (11, "w1")
    assert tree.prefix_match("hello wonder", now=3.0) == (8, "w1")  # "hello wo" of the edge "world"
    assert tree.prefix_match("help", now=3.0)[0] == 3
    assert tree.prefix_match("goodbye", now=3.0) == (0, None)
    # Each tenant owns the characters it inserted: the shared "hello " once each, plus its own tail.
    assert tree.sizes == {"w1": 11, "w2": 11}


def test_at_a_node_several_tenants_own_the_most_recent_one_is_chosen() -> None:
    tree = RadixTree()
    tree.insert("system prompt A", "w1", now=1.0)
    tree.insert("system prompt B", "w2", now=2.0)
    assert tree.prefix_match("system prompt C", now=3.0) == (14, "w2")
    tree.insert("system prompt A", "w1", now=4.0)
    assert tree.prefix_match("system prompt C", now=5.0) == (14, "w1")


def test_eviction_removes_a_tenants_least_recent_leaves_down_to_the_limit() -> None:
    tree = RadixTree()
    tree.insert("aaaa-old", "w1", now=1.0)
    tree.insert("aaaa-new", "w1", now=5.0)
    tree.insert("aaaa-new", "w2", now=6.0)
    assert tree.sizes["w1"] == 5 + 3 + 3  # "aaaa-" shared by its two texts, then "old" and "new"
    tree.evict_tenant_by_size(8)
    assert tree.sizes["w1"] == 8
    assert tree.prefix_match("aaaa-old", now=7.0) == (5, "w2")  # only "aaaa-" is left of that branch
    assert tree.prefix_match("aaaa-new", now=7.0)[0] == 8
    tree.evict_tenant_by_size(0)  # every tenant over the limit is cut back
    assert tree.sizes == {"w1": 0, "w2": 0}
    assert tree.prefix_match("aaaa-new", now=8.0) == (0, None)
    assert not tree.root.children
