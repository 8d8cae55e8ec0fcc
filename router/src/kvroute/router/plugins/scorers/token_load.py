"""`token-load-scorer`: prefer endpoints with less uncached prompt work queued through this router.

The router tracks, per endpoint, the prompt tokens of its requests that are still being prefilled and were not
found in the endpoint's prefix cache. At `pre_request` the primary target e (`result.endpoints[0]`) is charged

    uncached_e = info.uncached_tokens(e)      when the prefix plugin named `prefixPluginName` (default
                                              "prefix-cache-scorer") published its match info for the request
    uncached_e = ceil(len(prompt) / 4)        otherwise (every prompt token, four characters per token)

(`PrefixMatchInfo.uncached_tokens` is `ceil((prompt_chars - matched_blocks_e * block_chars) / 4)`). The charge is
released once, at whichever comes first: the first response chunk that carries output tokens (prefill is done)
or `on_response_complete` (any outcome).

With in-flight uncached tokens `t_e` and `T` = `queueThresholdTokens` (default 4,194,304):

    score_e = 1 - min(1, t_e / T)

e.g. with T = 1000, t [0, 250, 1000, 4000] scores [1.0, 0.75, 0.0, 0.0]. The score is absolute, not normalised
across endpoints. Tokens of other router replicas are seen with fleet sync (`FleetShared`: a peer's request
charges its tokens here too), not otherwise.

With an `inflight-load-producer` named `inFlightLoadProducerName` (default "inflight-load-producer") configured,
the scorer reads llm-d's accounting instead and keeps none of its own: the producer's in-flight tokens on e plus
this request's uncached tokens there (`InFlightLoad.request_tokens`, from the producer's prefix plugin),

    score_e = 1 - min(1, (inflight_e + uncached_e) / T)

e.g. T = 1000, 200 tokens in flight on A and a 400-character prompt of which A cached 100 characters:
1 - (200 + 75) / 1000 = 0.725. Without that producer the scorer behaves as above.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import estimate_tokens
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer, in_flight_load_key
from kvroute.router.plugins.scorers.in_flight import InFlightScorer


class TokenLoadScorer(InFlightScorer):
    type_name = "token-load-scorer"
    releases_at_first_token = True

    class Params(PluginParams):
        queue_threshold_tokens: int = Field(
            default=4_194_304,
            gt=0,
            description="In-flight prompt tokens at and above which an endpoint scores 0.",
        )
        prefix_plugin_name: str = Field(
            default="prefix-cache-scorer",
            min_length=1,
            description="Name of the prefix plugin whose match info gives the cached part of the prompt.",
        )
        in_flight_load_producer_name: str = Field(
            default=InFlightLoadProducer.type_name,
            min_length=1,
            description="Name of the inflight-load-producer to read the load from, when one is configured.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._threshold = params.queue_threshold_tokens
        self._match_key = prefix_match_key(params.prefix_plugin_name)
        self._load_key = in_flight_load_key(params.in_flight_load_producer_name)

    def in_flight_tokens(self, endpoint_id: str) -> int:
        """Prompt tokens charged to the endpoint and not yet released."""
        return self._ledger.total(endpoint_id)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        threshold = self._threshold
        load = state.read(self._load_key)
        if load is not None:
            tokens = load.tokens.get
            return {
                e.id: 1.0 - min(1.0, (tokens(e.id, 0) + load.request_tokens(state, request, e.id)) / threshold)
                for e in endpoints
            }
        return {e.id: 1.0 - min(1.0, self.in_flight_tokens(e.id) / threshold) for e in endpoints}

    def amount(self, state: CycleState, request: LLMRequest, endpoint_id: str) -> int | None:
        if state.read(self._load_key) is not None:
            return None  # the producer counts this request
        info = state.read(self._match_key)
        return info.uncached_tokens(endpoint_id) if info is not None else estimate_tokens(len(request.prompt))
