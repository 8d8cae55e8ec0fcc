"""`prefix-cache-affinity-filter`: keep only the cache-warm endpoints, until they are overloaded.

llm-d's "sticky until saturated" filter. An endpoint is sticky when its prefix score reaches `affinityThreshold`
(default 0.80):

    score_e = matched_blocks[e] / total_blocks      (0 when the request has no block or no matches were published)

from the `PrefixMatchInfo` of the producer named `prefixMatchInfoProducerName` (default
"approx-prefix-cache-producer"), which has run before any filter. The filter returns the sticky endpoints, or
every endpoint, unchanged, when:

- there is at most one endpoint, or `affinityThreshold` is 0;
- exploration: a draw of the injected `random.Random` falls below `explorationProbability` (default 0), so other
  endpoints get warmed from time to time;
- no endpoint is sticky;
- the sticky endpoints are saturated (llm-d's load gate). With `t_e` the uncached prompt tokens in flight on e
  (the `InFlightLoad` of the producer named `inFlightLoadProducerName`, default "inflight-load-producer") and
  `gap = min(t_e, e sticky) - min(t_e, e not sticky)`, stickiness breaks when

      gap / peakPrefillThroughput * 1000 > maxTTFTPenaltyMs       (estimated TTFT, ms; defaults 15,928 tok/s, 18,000)
      gap > maxTokensInFlightPenalty                              (tokens; default 0 = off)

  either gate being off when its parameter is 0. With a gate on and no `InFlightLoad` published (no producer),
  the signal is missing and every endpoint is kept, as llm-d does.

e.g. threshold 0.8 and scores A 0.9, B 0.85, C 0.1 keep A and B; with A and B at 300,000 and 290,000 tokens in
flight and C at 0, the estimated penalty is 290,000 / 15,928 * 1000 = 18,207 ms > 18,000, so A, B and C are kept.
llm-d's optimized baseline sets `maxTTFTPenaltyMs: 0` and `maxTokensInFlightPenalty: 286720` (= 20,480 tok/s x
14 s). Only the `prefillThroughput` TTFT source exists here (llm-d's `latencyPredictor` needs its predictor).

What runs after the filter decides among the kept endpoints; llm-d pairs it with `token-load-scorer` and
`max-score-picker`, and warns against a separately weighted prefix scorer, which would undo a break.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, Self

from pydantic import Field, model_validator

from kvroute.router.framework import CycleState, Endpoint, Filter, LLMRequest
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.router.plugins.producers.approx_prefix_cache import ApproxPrefixCacheProducer
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer, in_flight_load_key


class PrefixCacheAffinityFilter(Filter):
    type_name = "prefix-cache-affinity-filter"
    uses_rng = True

    class Params(PluginParams):
        affinity_threshold: float = Field(
            default=0.80,
            ge=0.0,
            le=1.0,
            description="Prefix score from which an endpoint is sticky; 0 turns the filter off.",
        )
        exploration_probability: float = Field(
            default=0.0,
            ge=0.0,
            le=1.0,
            description="Probability of keeping every endpoint regardless of affinity.",
        )
        max_ttft_penalty_ms: float = Field(
            default=18_000.0,
            ge=0.0,
            alias="maxTTFTPenaltyMs",
            description="Estimated TTFT (ms) the best sticky endpoint may exceed the best other by; 0 = off.",
        )
        ttft_source: Literal["prefillThroughput"] = Field(
            default="prefillThroughput",
            description="Where the estimated TTFT comes from: in-flight tokens / peakPrefillThroughput.",
        )
        peak_prefill_throughput: float = Field(
            default=15_928.0,
            ge=0.0,
            description="Prefill tokens per second an endpoint computes, for the estimated TTFT.",
        )
        max_tokens_in_flight_penalty: int = Field(
            default=0,
            ge=0,
            description="In-flight tokens the best sticky endpoint may exceed the best other by; 0 = off.",
        )
        prefix_match_info_producer_name: str = Field(
            default=ApproxPrefixCacheProducer.type_name,
            min_length=1,
            description="Name of the plugin whose prefix match info gives the scores.",
        )
        in_flight_load_producer_name: str = Field(
            default=InFlightLoadProducer.type_name,
            min_length=1,
            description="Name of the inflight-load-producer whose counts feed the load gate.",
        )

        @model_validator(mode="after")
        def _throughput_for_the_ttft_gate(self) -> Self:
            if self.max_ttft_penalty_ms > 0 and self.peak_prefill_throughput == 0:
                raise ValueError("peakPrefillThroughput must be > 0 when maxTTFTPenaltyMs is")
            return self

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._params = params
        self._rng = rng or random.Random()
        self._prefix_key = prefix_match_key(params.prefix_match_info_producer_name)
        self._load_key = in_flight_load_key(params.in_flight_load_producer_name)

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        params = self._params
        threshold = params.affinity_threshold
        if len(endpoints) <= 1 or threshold <= 0:
            return list(endpoints)
        if params.exploration_probability > 0 and self._rng.random() < params.exploration_probability:
            return list(endpoints)
        info = state.read(self._prefix_key)
        total = info.total_blocks if info is not None else 0
        if info is None or not total:
            return list(endpoints)
        get = info.matched_blocks.get
        sticky = [e for e in endpoints if get(e.id, 0) / total >= threshold]
        if not sticky:
            return list(endpoints)
        if len(sticky) < len(endpoints) and self._saturated(state, sticky, endpoints):
            return list(endpoints)
        return sticky

    def _saturated(self, state: CycleState, sticky: list[Endpoint], endpoints: Sequence[Endpoint]) -> bool:
        """llm-d's load gate: the best sticky endpoint is too far behind the best other one."""
        params = self._params
        if params.max_ttft_penalty_ms <= 0 and params.max_tokens_in_flight_penalty <= 0:
            return False
        load = state.read(self._load_key)
        if load is None:
            return True  # the gate's signal is missing: keep every endpoint
        tokens = load.tokens.get
        sticky_ids = {e.id for e in sticky}
        best_sticky = min(tokens(e.id, 0) for e in sticky)
        best_other = min(tokens(e.id, 0) for e in endpoints if e.id not in sticky_ids)
        gap = best_sticky - best_other
        if params.max_ttft_penalty_ms > 0 and gap / params.peak_prefill_throughput * 1000 > params.max_ttft_penalty_ms:
            return True
        return 0 < params.max_tokens_in_flight_penalty < gap
