"""`kv-cache-utilization-scorer`: prefer endpoints with free KV-cache memory.

Reads `kv_usage` (fraction of the model server's KV-cache blocks in use, 0..1, from the last scrape):

    score_e = 1 - kv_usage_e        clamped to [0, 1]

e.g. kv_usage [0.0, 0.25, 1.0] scores [1.0, 0.75, 0.0]. The score is absolute, not normalised across
endpoints, so a pool that is uniformly full scores low everywhere. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Scorer


class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return {e.id: min(1.0, max(0.0, 1.0 - e.metrics.kv_usage)) for e in endpoints}
