"""`sglang-cache-aware`: SGLang router's `cache_aware` policy, re-implemented from its published description
(reference/peers.md, A2; sglang-router 0.3.2 defaults, miss handling after SGLang PR #14650).

State: one character radix tree (`radix_tree.RadixTree`) built only from this router's own decisions, each
worker a tenant; and the router's in-flight request count per worker ("load"), +1 when routed, -1 at completion.

For each request, with loads `L`:

1. Imbalanced, i.e. `max(L) - min(L) > balance_abs_threshold` (64) and `max(L) > min(L) * balance_rel_threshold`
   (1.5): the least-loaded worker.
2. Else `matched, tenant = tree.prefix_match(text)`; `match_rate = matched / len(text)`. Above
   `cache_threshold` (0.3): that tenant. Otherwise (a miss): the least-loaded worker.
3. The text is inserted into the tree under the chosen worker.

Ties for the least load go to the first worker in order, as `min` over the worker list does. Every
`eviction_interval_s` (60 s of simulated time) each tenant is cut back to `max_tree_size` characters
(67,108,864), which a benchmark of this size never reaches. The text is the request's whole prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.bench.quality.policies.base import Policy
from kvroute.bench.quality.policies.radix_tree import RadixTree
from kvroute.simulator.des.harness import EngineView, RequestRecord, WorkloadRequest


class SGLangCacheAware(Policy):
    def __init__(
        self,
        *,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval_s: float = 60.0,
        max_tree_size: int = 67_108_864,
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.eviction_interval_s = eviction_interval_s
        self.max_tree_size = max_tree_size
        self.tree = RadixTree()
        self.loads: list[int] = []
        self._chosen: dict[str, int] = {}
        self._next_eviction = eviction_interval_s

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        if not self.loads:
            self.loads = [0] * len(engines)
        if now >= self._next_eviction:
            self.tree.evict_tenant_by_size(self.max_tree_size)
            self._next_eviction = now + self.eviction_interval_s
        choice = self.choose(request.prompt, now)
        self.tree.insert(request.prompt, choice, now)
        self.loads[choice] += 1
        self._chosen[request.request_id] = choice
        return choice

    def choose(self, text: str, now: float) -> int:
        loads = self.loads
        least = min(range(len(loads)), key=loads.__getitem__)
        high, low = max(loads), loads[least]
        if high - low > self.balance_abs_threshold and high > low * self.balance_rel_threshold:
            return least
        matched, tenant = self.tree.prefix_match(text, now)
        if text and tenant is not None and matched / len(text) > self.cache_threshold:
            assert isinstance(tenant, int)
            return tenant
        return least

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self.loads[self._chosen.pop(record.request_id)] -= 1
