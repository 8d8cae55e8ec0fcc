"""llm-d's optimized-baseline document (guides/optimized-baseline/router/optimized-baseline.values.yaml) loads
as-is and routes the way it is meant to: sticky to cache-warm endpoints, then by uncached tokens in flight."""

from __future__ import annotations

import random

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.loader import load_config
from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.filters.prefix_cache_affinity import PrefixCacheAffinityFilter
from kvroute.router.plugins.producers.approx_prefix_cache import ApproxPrefixCacheProducer
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.token_load import TokenLoadScorer

OPTIMIZED_BASELINE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: inflight-load-producer
- type: approx-prefix-cache-producer
  parameters:
      maxPrefixTokensToMatch: 40960
- type: prefix-cache-affinity-filter
  parameters:
    affinityThreshold: 0.80
    maxTokensInFlightPenalty: 286720
    maxTTFTPenaltyMs: 0
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""

ENDPOINTS = [Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3)]


def send(config: LoadedConfig, prompt: str, request_id: str) -> Endpoint:
    request = LLMRequest(request_id=request_id, model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})
    state = CycleState()
    result = config.scheduler.schedule(request, ENDPOINTS, state)
    for hook in config.pre_request:
        hook.pre_request(state, request, result)
    return result.endpoints[0]


def test_the_document_loads_with_producers_a_filter_a_scorer_and_the_default_picker() -> None:
    config = load_config(OPTIMIZED_BASELINE, REGISTRY)
    producers = config.scheduler.producers
    assert [type(p) for p in producers] == [InFlightLoadProducer, ApproxPrefixCacheProducer]
    assert producers[1].params.max_blocks == 2560  # type: ignore[attr-defined]  # 40,960 tokens / 16
    profile = config.profiles["default"]
    assert [type(f) for f in profile.filters] == [PrefixCacheAffinityFilter]
    assert [(type(s), w) for s, w in profile.scorers] == [(TokenLoadScorer, 1.0)]
    assert profile.picker.type_name == "max-score-picker"
    params = profile.filters[0].params
    assert (params.affinity_threshold, params.max_tokens_in_flight_penalty) == (0.8, 286_720)  # type: ignore[attr-defined]


def test_requests_stick_to_the_warm_endpoint_and_new_prefixes_go_to_the_least_loaded() -> None:
    config = load_config(OPTIMIZED_BASELINE, REGISTRY, rng=random.Random(0))
    shared = "s" * 4000  # 1,000 tokens
    first = send(config, shared + "one", "r1")
    # the same prefix follows to the endpoint already holding it, although the others are idle
    assert send(config, shared + "two", "r2") == first
    assert send(config, shared + "three", "r3") == first
    # a new prefix has no warm endpoint: the token load sends it elsewhere
    other = send(config, "o" * 4000, "r4")
    assert other != first
    # a third prefix avoids both loaded endpoints
    assert send(config, "t" * 4000, "r5") not in (first, other)
