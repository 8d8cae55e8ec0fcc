"""`pd-profile-handler`: prefill/decode disaggregation, prefill only when the decode endpoint lacks the prompt.

1. Run the `decodeProfile` ("decode"). No decode endpoint: `NoEndpointsError`.
2. Estimate the prompt tokens the chosen decode endpoint d would have to compute itself, from the
   `PrefixMatchInfo` of the plugin named `prefixPluginName` (`prefix.match`, four characters per token):

       uncached_d = ceil(max(0, prompt_chars - matched_blocks_d * block_chars) / 4)

   (without match info, the whole prompt: `ceil(prompt_chars / 4)`). Run the `prefillProfile` ("prefill") only
   when `uncached_d >= threshold` (tokens; the default 0 always disaggregates). e.g. threshold 100, a 1,000
   character prompt (250 tokens) with 3 blocks of 64 characters cached on d: 202 uncached tokens -> prefill.
3. The result's primary profile is always decode. With a prefill endpoint p (other than d) the request is
   disaggregated: the result carries a `DisaggregationPlan` (`SchedulingResult.disaggregation`), which the front
   door executes (the proxy calls p then d; ext_proc names p to d's sidecar in `x-prefiller-host-port`). No
   prefill endpoint (profile skipped, missing or empty, or it picked d itself): decode only, no plan.

`decider: predicted-latency` replaces step 2's threshold with the latency predictions of two
`predicted-latency-scorer`s: the one scoring the decode profile with `remotePrefill: true`
(`decodeLatencyPlugin`, default "decode-latency") and the one scoring the prefill profile
(`prefillLatencyPlugin`, default "prefill-latency"). The prefill profile always runs; then, for the chosen
decode endpoint d and prefill endpoint p:

    local  = local_cost_d                          (d computes the uncached prompt itself: its TTFT, its charges
                                                    and the delay to the sequences decoding on d)
    remote = cost_p + kvTransferSetupSeconds + kvTransferSecondsPerToken * uncached_d + ttft_d
             (p's prefill and its charges, moving the KV d lacks, and d joining its decode batch)

and the request is disaggregated only when `remote < local`; otherwise the prefill result is dropped (no plan,
nothing charged to p). e.g. local 0.300 s, cost_p 0.120 s, 4,000 tokens to move at 2.6 us + 1 ms and
ttft_d 0.015 s: remote = 0.1464 s, disaggregate. A missing prediction disaggregates, as threshold 0 does.

`mode` says who decides, and when, that the prefill endpoint does the prefill:

- `prefill-first` (default): the router's estimate decides. The request goes to d with the header; d's sidecar
  (or kvroute's proxy) runs the prefill on p first, then the decode on d with the transferred KV cache.
- `decode-first`: the engine's real cache decides. The plan carries `cache_hit_threshold` (the request's own,
  else `cacheHitThreshold`, default 0.8), which the executor writes into the body sent to d. An engine whose
  cached share of the prompt is below it answers at once with `finish_reason: "cache_threshold"`; the executor
  then runs the prefill on p and re-sends the decode to d, both with `cache_hit_threshold: 0`. Otherwise d
  serves the request from its own cache and p is never called. Through ext_proc the header is set in this mode
  too: the llm-d sidecar takes its prefiller from it and switches to decode-first when the body has
  `cache_hit_threshold`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import (
    CycleState,
    DisaggregationMode,
    DisaggregationPlan,
    Endpoint,
    LLMRequest,
    ProfileHandler,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
)
from kvroute.router.framework.plugins import NoEndpointsError
from kvroute.router.plugins.prefix.hashing import estimate_tokens
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.router.plugins.scorers.predicted_latency import prediction_key

Decider = Literal["threshold", "predicted-latency"]


class PDProfileHandler(ProfileHandler):
    type_name = "pd-profile-handler"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        threshold: int = Field(
            default=0, ge=0, description="Uncached prompt tokens on the decode endpoint from which to prefill apart."
        )
        decode_profile: str = Field(default="decode", min_length=1, alias="decodeProfile")
        prefill_profile: str = Field(default="prefill", min_length=1, alias="prefillProfile")
        prefix_plugin_name: str = Field(
            default="prefix-cache-scorer",
            min_length=1,
            alias="prefixPluginName",
            description="Name of the prefix plugin whose match info gives the decode endpoint's cached prefix.",
        )
        mode: DisaggregationMode = Field(
            default="prefill-first", description="Who decides that the prefill runs apart."
        )
        decider: Decider = Field(
            default="threshold", description="What decides to disaggregate: `threshold`, or `predicted-latency`."
        )
        decode_latency_plugin: str = Field(
            default="decode-latency",
            min_length=1,
            alias="decodeLatencyPlugin",
            description="predicted-latency decider: the decode profile's predicted-latency-scorer (remotePrefill).",
        )
        prefill_latency_plugin: str = Field(
            default="prefill-latency",
            min_length=1,
            alias="prefillLatencyPlugin",
            description="predicted-latency decider: the prefill profile's predicted-latency-scorer.",
        )
        kv_transfer_seconds_per_token: float = Field(
            default=2.6e-6,
            ge=0.0,
            alias="kvTransferSecondsPerToken",
            description="predicted-latency decider: time to move one token's KV from the prefill endpoint.",
        )
        kv_transfer_setup_seconds: float = Field(
            default=1e-3,
            ge=0.0,
            alias="kvTransferSetupSeconds",
            description="predicted-latency decider: fixed time of one KV transfer.",
        )
        cache_hit_threshold: float = Field(
            default=0.8,
            ge=0.0,
            le=1.0,
            alias="cacheHitThreshold",
            description="decode-first: cached share of the prompt below which the decode endpoint hands back.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._params = params
        self._match_key = prefix_match_key(params.prefix_plugin_name)

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        decode_name, prefill_name = self._params.decode_profile, self._params.prefill_profile
        if not results:
            decode = profiles.get(decode_name)
            if decode is None:
                raise ValueError(f"{self.type_name} {self.name!r}: no profile named {decode_name!r}")
            return {decode_name: decode}
        decode_result = results.get(decode_name)
        target = decode_result.primary if decode_result is not None else None
        prefill = profiles.get(prefill_name)
        if prefill_name in results or target is None or prefill is None:
            return {}
        by_threshold = self._params.decider == "threshold"
        if by_threshold and self.uncached_tokens(state, request, target) < self._params.threshold:
            return {}
        return {prefill_name: prefill}

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        decode_name = self._params.decode_profile
        decode_result = results.get(decode_name)
        decode = decode_result.primary if decode_result is not None else None
        if decode is None:
            raise NoEndpointsError(f"profile {decode_name!r} found no endpoint for the request")
        prefill_result = results.get(self._params.prefill_profile)
        prefill = prefill_result.primary if prefill_result is not None else None
        if prefill is not None and prefill != decode and not self._remote_is_faster(state, request, decode, prefill):
            results = {name: r for name, r in results.items() if name != self._params.prefill_profile}
            prefill = None
        if prefill is None or prefill == decode:
            return SchedulingResult(profile_results=dict(results), primary_profile=decode_name)
        decode_first = self._params.mode == "decode-first"
        threshold = request.cache_hit_threshold
        if threshold is None:
            threshold = self._params.cache_hit_threshold
        return SchedulingResult(
            profile_results=dict(results),
            primary_profile=decode_name,
            disaggregation=DisaggregationPlan(self._params.mode, decode, prefill, threshold if decode_first else None),
        )

    def _remote_is_faster(self, state: CycleState, request: LLMRequest, decode: Endpoint, prefill: Endpoint) -> bool:
        """The `predicted-latency` decider (module docstring); True with the threshold decider."""
        p = self._params
        if p.decider != "predicted-latency":
            return True
        on_decode = state.read(prediction_key(p.decode_latency_plugin))
        on_prefill = state.read(prediction_key(p.prefill_latency_plugin))
        if on_decode is None or on_prefill is None:
            return True
        local = on_decode.local_cost.get(decode.id)
        join = on_decode.ttft.get(decode.id)
        prefill_cost = on_prefill.cost.get(prefill.id)
        if local is None or join is None or prefill_cost is None:
            return True
        moved = self.uncached_tokens(state, request, decode)
        remote = prefill_cost + p.kv_transfer_setup_seconds + p.kv_transfer_seconds_per_token * moved + join
        return remote < local

    def uncached_tokens(self, state: CycleState, request: LLMRequest, endpoint: Endpoint) -> int:
        """Estimated prompt tokens missing from the endpoint's prefix cache."""
        info = state.read(self._match_key)
        if info is None:
            return estimate_tokens(len(request.prompt))
        return info.uncached_tokens(endpoint.id)
