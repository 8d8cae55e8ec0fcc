"""A multi-tenant radix tree over characters: which tenants (workers) were sent which text, approximately.

This is the data structure of SGLang's cache-aware router, re-implemented from its description
(reference/peers.md, A2). Each node holds the text of its edge, its children keyed by their first character, and
the tenants that own the node with the time each last used it. A tenant owning a node owns all its ancestors.

- `insert(text, tenant, now)`: walk down, splitting an edge where the text diverges, adding the leftover as a
  new leaf; every node on the path gets `tenant` (time `now`). The tenant's size grows by the characters of the
  nodes it did not own yet.
- `prefix_match(text, now)`: walk down as far as the text matches (a partially matched last edge counts its
  matched characters); answer the matched length and the tenant of the deepest node reached. SGLang takes an
  arbitrary tenant of that node (a hash-map's first); this takes the most recent, which is deterministic. The
  chosen tenant's access times along the path are refreshed.
- `evict_tenant_by_size(max_size)`: while a tenant owns more than `max_size` characters, remove it from its least
  recently used leaf (a node none of whose children it owns); a node left without tenants is deleted.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class _Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: _Node | None) -> None:
        self.text = text
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.tenants: dict[Hashable, float] = {}


def common_prefix_length(a: str, b: str) -> int:
    """Length of the common prefix, by binary search over slice comparisons (done in C)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class RadixTree:
    def __init__(self) -> None:
        self.root = _Node("", None)
        self.sizes: dict[Hashable, int] = {}

    def insert(self, text: str, tenant: Hashable, now: float) -> None:
        node = self.root
        node.tenants[tenant] = now
        rest = text
        while rest:
            child = node.children.get(rest[0])
            if child is None:
                leaf = _Node(rest, node)
                node.children[rest[0]] = leaf
                self._own(leaf, tenant, now)
                return
            shared = common_prefix_length(child.text, rest)
            if shared < len(child.text):
                child = self._split(child, shared)
            self._own(child, tenant, now)
            node, rest = child, rest[shared:]

    def prefix_match(self, text: str, now: float) -> tuple[int, Hashable | None]:
        node, matched, rest = self.root, 0, text
        path: list[_Node] = []
        while rest:
            child = node.children.get(rest[0])
            if child is None:
                break
            shared = common_prefix_length(child.text, rest)
            matched += shared
            path.append(child)
            if shared < len(child.text):
                break
            node, rest = child, rest[shared:]
        if not path:
            return 0, None
        tenants = path[-1].tenants
        tenant = max(tenants, key=tenants.__getitem__)
        for visited in path:
            visited.tenants[tenant] = now
        return matched, tenant

    def evict_tenant_by_size(self, max_size: int) -> None:
        for tenant in [t for t, size in self.sizes.items() if size > max_size]:
            leaves = [(n.tenants[tenant], id(n), n) for n in self._nodes() if self._is_leaf_of(n, tenant)]
            heapq.heapify(leaves)
            while self.sizes[tenant] > max_size and leaves:
                _, _, node = heapq.heappop(leaves)
                del node.tenants[tenant]
                self.sizes[tenant] -= len(node.text)
                parent = node.parent
                if not node.tenants and parent is not None:
                    del parent.children[node.text[0]]
                if parent is not None and parent is not self.root and self._is_leaf_of(parent, tenant):
                    heapq.heappush(leaves, (parent.tenants[tenant], id(parent), parent))

    def _own(self, node: _Node, tenant: Hashable, now: float) -> None:
        if tenant not in node.tenants:
            self.sizes[tenant] = self.sizes.get(tenant, 0) + len(node.text)
        node.tenants[tenant] = now

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut `child`'s edge after `at` characters; returns the new upper node (same tenants)."""
        parent = child.parent
        assert parent is not None
        upper = _Node(child.text[:at], parent)
        upper.tenants = dict(child.tenants)
        parent.children[upper.text[0]] = upper
        child.text = child.text[at:]
        child.parent = upper
        upper.children[child.text[0]] = child
        return upper

    def _nodes(self) -> list[_Node]:
        nodes, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children.values())
        return nodes

    @staticmethod
    def _is_leaf_of(node: _Node, tenant: Hashable) -> bool:
        return tenant in node.tenants and not any(tenant in c.tenants for c in node.children.values())
