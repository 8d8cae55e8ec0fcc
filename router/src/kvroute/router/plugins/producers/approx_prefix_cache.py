"""`approx-prefix-cache-producer`: the approximate prefix cache's matches, published before any filter runs.

llm-d's 2026 split of its approximate prefix plugin into a producer and a scorer: this is the producer. Once per
scheduling cycle, before the profile handler picks, the request's prompt is matched against every candidate
endpoint in the approximate prefix cache (`prefix.approx`: chained hashes of `blockSizeTokens * 4`-character
blocks, recorded optimistically for the endpoints picked, at `pre_request`) and published as the same
`PrefixMatchInfo` that `prefix-cache-scorer` publishes, under `prefix_match_key(<plugin name>)`:

    matched_blocks[e] = consecutive blocks, from the first, recorded for e
    total_blocks      = the request's hashed block count

so `prefix-cache-affinity-filter`, `inflight-load-producer`, `no-hit-lru-scorer`, `token-load-scorer`,
`active-blocks-scorer` and `pd-profile-handler` read it by naming this plugin (`prefixMatchInfoProducerName`,
`prefixPluginName`). It scores nothing.

Parameters are those of `prefix-cache-scorer` (`autoTune` true, `blockSizeTokens` 16, `maxPrefixBlocksToMatch`
256, `lruCapacityPerServer` 31,250, GIE's older `hashBlockSize` in characters) plus llm-d's
`maxPrefixTokensToMatch` (0 = off): when set it replaces the block cap, `max_blocks = max(1,
maxPrefixTokensToMatch * 4 // block_chars)` (`maxPrefixTokensToMatch / blockSizeTokens`). e.g. 40,960 tokens in
16-token blocks match at most 2,560 blocks. Fleet sync and endpoint removal behave as the scorer's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from kvroute.router.framework import CycleState, DataProducer, Endpoint, LLMRequest
from kvroute.router.plugins.prefix.approx import ApproxPrefixCache, ApproxPrefixParams
from kvroute.router.plugins.prefix.hashing import CHARS_PER_TOKEN


class ApproxPrefixCacheProducerParams(ApproxPrefixParams):
    max_prefix_tokens_to_match: int = Field(
        default=0,
        ge=0,
        alias="maxPrefixTokensToMatch",
        description="Prompt tokens matched at most; replaces maxPrefixBlocksToMatch when > 0.",
    )

    @property
    def max_blocks(self) -> int:
        if self.max_prefix_tokens_to_match > 0:
            return max(1, self.max_prefix_tokens_to_match * CHARS_PER_TOKEN // self.block_chars)
        return self.max_prefix_blocks_to_match


class ApproxPrefixCacheProducer(ApproxPrefixCache, DataProducer):
    type_name = "approx-prefix-cache-producer"

    Params = ApproxPrefixCacheProducerParams

    def __init__(self, name: str, params: ApproxPrefixCacheProducerParams | None = None) -> None:
        super().__init__(name, params or self.Params())

    def produce(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        self.match(state, request, [e.id for e in endpoints])
