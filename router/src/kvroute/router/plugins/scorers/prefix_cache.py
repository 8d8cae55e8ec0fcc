"""`prefix-cache-scorer`: prefer the endpoints most likely to hold the request's prompt prefix in their KV cache.

The approximate prefix cache (`prefix.approx`: chained block hashes of `blockSizeTokens * 4` characters, at most
`maxPrefixBlocksToMatch` of them, recorded for the picked endpoints at `pre_request`) is matched against the
profile's filtered endpoints each time the profile is scored:

    score_e = matched_e / total

where `matched_e` is the number of consecutive blocks, from the first, recorded for endpoint e and `total` the
request's block count (an empty prompt scores 0 everywhere). e.g. a 4-block prompt whose first 3 blocks were sent
to A and first block to B scores A 0.75, B 0.25, any other endpoint 0.

The matches are published as `PrefixMatchInfo` under `prefix_match_key(<plugin name>)` for the plugins that build
on them (`prefix.match`). Parameters, memory bounds and fleet sync are those of `prefix.approx`.
`approx-prefix-cache-producer` keeps the same index without scoring, for the filters that run before scorers.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.plugins.prefix.approx import ApproxPrefixCache, ApproxPrefixParams


class PrefixCacheScorer(ApproxPrefixCache, Scorer):
    type_name = "prefix-cache-scorer"
    publishes_state = True  # no-hit-lru, active-blocks and the P/D handler read its match info

    Params = ApproxPrefixParams

    def __init__(self, name: str, params: ApproxPrefixParams | None = None) -> None:
        super().__init__(name, params or self.Params())

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        ids = [e.id for e in endpoints]
        matched, total = self.match(state, request, ids)
        if not total:
            return dict.fromkeys(ids, 0.0)
        get = matched.get
        return {endpoint_id: get(endpoint_id, 0) / total for endpoint_id in ids}
