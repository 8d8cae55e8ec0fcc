"""`precise-prefix-cache-scorer`: scores from KV events, the match info other plugins read, speculative entries."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
import xxhash

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config
from kvroute.router.framework import (
    AllBlocksCleared,
    ApiKind,
    BlockStored,
    CycleState,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    PreparationFailed,
    ProfileResult,
    SchedulingResult,
)
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.precise_prefix_cache import PrecisePrefixCacheScorer
from kvroute.router.plugins.tokenizers import EstimateTokenizer

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
MODEL = "m"
TOKENS = list(range(1000, 1018))  # 18 tokens: 4 full blocks of 4, 2 left over
KV_EVENTS = {"kvEvents": {"endpointPort": 5557}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scorer(clock: Clock | None = None, **params: Any) -> PrecisePrefixCacheScorer:
    validated = PrecisePrefixCacheScorer.Params.model_validate({**KV_EVENTS, "blockSizeTokens": 4, **params})
    return PrecisePrefixCacheScorer("precise", validated, clock=clock or Clock())


def request(tokens: list[int] | None = TOKENS, model: str = MODEL, prompt: str = "") -> LLMRequest:
    body = {"model": model, "prompt": prompt}
    return LLMRequest("r", model, ApiKind.COMPLETIONS, prompt, body, {}, token_ids=tokens)


def store(s: PrecisePrefixCacheScorer, endpoint: Endpoint, tokens: list[int], block_size: int = 4) -> None:
    """The endpoint's engine reports caching the full blocks of `tokens` (engine hashes of its own)."""
    blocks = len(tokens) // block_size
    prefixes = (repr((endpoint.id, tokens[: (i + 1) * block_size])).encode() for i in range(blocks))
    hashes = tuple(map(xxhash.xxh64_intdigest, prefixes))
    s.on_kv_events(endpoint, MODEL, [BlockStored(hashes, None, tuple(tokens[: blocks * block_size]), block_size)])


def result(target: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    results = {"decode": ProfileResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    return SchedulingResult(profile_results=results, primary_profile="decode")


def test_score_is_the_share_of_full_blocks_held_from_the_first() -> None:
    s = scorer()
    store(s, A, TOKENS[:12])
    store(s, B, TOKENS[:4])
    store(s, C, [7, *TOKENS[1:16]])  # differs in the first block: nothing matches

    assert s.score(CycleState(), request(), [A, B, C]) == {A.id: 0.75, B.id: 0.25, C.id: 0.0}


def test_match_info_counts_exact_tokens_for_the_plugins_that_read_it() -> None:
    s = scorer()
    store(s, A, TOKENS[:12])
    state = CycleState()
    s.score(state, request(), [A, B])

    info = state.require(prefix_match_key("precise"))
    assert info.matched_blocks == {A.id: 3}
    assert info.total_blocks == 4
    assert info.block_tokens == 4
    assert info.prompt_tokens == 18
    assert info.uncached_tokens(A.id) == 6  # 18 - 3 * 4
    assert info.uncached_tokens(B.id) == 18
    assert info.any_hit()


def test_a_prompt_without_a_full_block_scores_0_and_is_cold() -> None:
    s = scorer()
    store(s, A, TOKENS)
    state = CycleState()

    assert s.score(state, request(TOKENS[:3]), [A, B]) == {A.id: 0.0, B.id: 0.0}
    info = state.require(prefix_match_key("precise"))
    assert (info.total_blocks, info.prompt_tokens, info.any_hit()) == (0, 3, False)


def test_each_endpoint_is_matched_at_its_own_block_size() -> None:
    s = scorer()
    scraped = replace(B, metrics=EndpointMetrics(block_size=8))  # no events yet: the scraped size counts
    store(s, A, TOKENS[:12])
    store(s, C, TOKENS[:16], block_size=8)  # its events say 8
    state = CycleState()

    # A: 3 of 4 blocks of 4; C: 2 of 2 blocks of 8; B: 0 of 2 blocks of 8.
    assert s.score(state, request(), [A, scraped, C]) == {A.id: 0.75, B.id: 0.0, C.id: 1.0}
    assert s.block_size_of(scraped) == 8
    info = state.require(prefix_match_key("precise"))
    assert info.block_tokens == 4  # gcd(4, 8)
    assert info.matched_blocks == {A.id: 3, C.id: 4}
    assert info.uncached_tokens(C.id) == 2


def test_a_second_profile_adds_its_matches_to_the_same_info() -> None:
    s = scorer()
    store(s, A, TOKENS[:8])
    store(s, C, TOKENS[:16], block_size=8)
    state = CycleState()
    s.score(state, request(), [A, B])
    s.score(state, request(), [C])

    info = state.require(prefix_match_key("precise"))
    assert (info.block_tokens, info.matched_blocks) == (4, {A.id: 2, C.id: 4})


def test_without_token_ids_every_endpoint_scores_0_and_nothing_is_published() -> None:
    s = scorer(tokenizer="engine")
    store(s, A, TOKENS)
    state = CycleState()

    assert s.score(state, request(None, prompt="x" * 100), [A, B]) == {A.id: 0.0, B.id: 0.0}
    assert prefix_match_key("precise") not in state


def test_a_local_tokenizer_runs_inside_score_when_nothing_prepared_the_request() -> None:
    s = scorer()  # estimate: the simulator's ids
    prompt = "The quick brown fox jumps over the lazy dog. " * 4  # 180 characters: 45 tokens, 11 blocks
    store(s, A, EstimateTokenizer().encode(prompt, special_tokens=True))
    unprepared = request(None, prompt=prompt)

    assert s.score(CycleState(), unprepared, [A, B]) == {A.id: 1.0, B.id: 0.0}
    assert unprepared.token_ids is not None
    assert len(unprepared.token_ids) == 45


async def test_prepare_tokenizes_and_a_failure_is_a_preparation_failure() -> None:
    prepared = request(None, prompt="abcdefgh")
    await scorer().prepare(prepared, [A])
    assert prepared.token_ids == EstimateTokenizer().encode("abcdefgh", special_tokens=True)

    engine = scorer(tokenizer="engine", tokenizeTimeout="200ms")
    dead = Endpoint.create("127.0.11.254", 9)
    try:
        with pytest.raises(PreparationFailed, match="tokenizing on the engines failed"):
            await engine.prepare(request(None, prompt="abc"), [dead])
    finally:
        await engine.close()


def test_the_pick_is_held_speculatively_for_the_ttl() -> None:
    clock = Clock()
    s = scorer(clock, speculativeTTL="2s")
    state = CycleState()
    s.score(state, request(), [A, B, C])
    s.pre_request(state, request(), result(A, prefill=B))

    clock.now += 1.9
    assert s.score(CycleState(), request(), [A, B, C]) == {A.id: 1.0, B.id: 1.0, C.id: 0.0}
    store(s, A, TOKENS[:8])  # A's engine confirms two blocks
    clock.now += 0.1
    assert s.score(CycleState(), request(), [A, B, C]) == {A.id: 0.5, B.id: 0.0, C.id: 0.0}


def test_a_ttl_of_0_records_nothing_speculatively() -> None:
    s = scorer(speculativeTTL=0)
    state = CycleState()
    s.score(state, request(), [A])
    s.pre_request(state, request(), result(A))

    assert s.kv_index_entries() == 0


def test_an_endpoint_is_forgotten_when_it_leaves_and_cleared_when_its_engine_clears() -> None:
    s = scorer()
    store(s, A, TOKENS)
    store(s, B, TOKENS)
    s.on_kv_events(B, MODEL, [AllBlocksCleared()])
    assert s.score(CycleState(), request(), [A, B]) == {A.id: 1.0, B.id: 0.0}

    s.on_endpoints_removed([A.id])
    assert s.kv_index_entries() == 0


def test_capacity_is_twice_the_scraped_gpu_blocks_unless_configured() -> None:
    sized = replace(A, metrics=EndpointMetrics(num_gpu_blocks=3))
    s = scorer()
    assert (s.capacity_of(A), s.capacity_of(sized)) == (131_072, 6)
    store(s, sized, TOKENS * 2)  # 9 blocks reported, 6 kept
    assert s.index.blocks_of(A.id) == 6
    assert scorer(lruCapacityPerEndpoint=1000).capacity_of(sized) == 1000


def test_the_subscription_comes_from_the_parameters() -> None:
    central = scorer(kvEvents={"bind": "tcp://*:5557", "topicFilter": "kv@10."}).kv_events_subscription()
    assert (central.bind, central.endpoint_port, central.topic_filter) == ("tcp://*:5557", None, "kv@10.")
    assert scorer().kv_events_subscription().endpoint_port == 5557


CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - name: precise
    type: precise-prefix-cache-scorer
    parameters: {kvEvents: {bind: "tcp://*:5557"}, blockSizeTokens: 4}
  - type: no-hit-lru-scorer
    parameters: {prefixPluginName: precise}
  - type: decode-filter
  - type: prefill-filter
  - type: pd-profile-handler
    parameters: {prefixPluginName: precise, threshold: 10}
schedulingProfiles:
  - name: decode
    plugins: [{pluginRef: decode-filter}, {pluginRef: precise, weight: 3}, {pluginRef: no-hit-lru-scorer}]
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: precise, weight: 3}, {pluginRef: no-hit-lru-scorer}]
"""


def test_from_a_config_document_the_pd_handler_and_no_hit_lru_read_its_matches() -> None:
    config = load_config(CONFIG, REGISTRY, rng=random.Random(0))
    precise = config.plugins["precise"]
    assert isinstance(precise, PrecisePrefixCacheScorer)
    assert config.preparers == (precise,)
    assert config.kv_events_consumers == (precise,)
    decode = [Endpoint.create(f"10.0.1.{n}", 8000, labels={"llm-d.ai/role": "decode"}) for n in (1, 2)]
    prefill = Endpoint.create("10.0.2.1", 8000, labels={"llm-d.ai/role": "prefill"})
    store(precise, decode[1], TOKENS[:12])

    state = CycleState()
    warm = config.scheduler.schedule(request(), [*decode, prefill], state)
    assert warm.endpoints[0] == decode[1]  # 3 of 4 blocks cached there: 6 uncached tokens < 10, no prefill
    assert warm.disaggregation is None

    state = CycleState()
    cold = config.scheduler.schedule(request(list(range(40))), [*decode, prefill], state)
    plan = cold.disaggregation
    assert plan is not None
    assert (plan.decode, plan.prefill) == (cold.endpoints[0], prefill)  # 40 uncached tokens >= 10


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{}", "plugins[0].parameters.kvEvents: Field required"),
        ("{kvEvents: {}}", "set bind (e.g. tcp://*:5557"),
        ("{kvEvents: {bind: 'tcp://*:5557', endpointPort: 5557}}", "not both"),
        ("{kvEvents: {bind: 'tcp://*:99999'}}", 'invalid ZMQ endpoint "tcp://*:99999"'),
        ("{kvEvents: {bind: 'localhost:5557'}}", "expected tcp://<host>:<port>"),
        ("{kvEvents: {endpointPort: 0}}", "plugins[0].parameters.kvEvents.endpointPort"),
        ("{kvEvents: {endpointPort: 5557}, tokenizer: hf}", "tokenizer hf needs tokenizerPath"),
        ("{kvEvents: {endpointPort: 5557}, tokenizerPath: /t.json}", "only for tokenizer hf"),
        ("{kvEvents: {endpointPort: 5557}, tokenizer: sentencepiece}", "plugins[0].parameters.tokenizer"),
        ("{kvEvents: {endpointPort: 5557}, speculativeTTL: soon}", 'invalid duration "soon"'),
    ],
)
def test_bad_parameters_are_startup_errors_naming_the_path(parameters: str, message: str) -> None:
    text = f"""\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {parameters}
"""
    with pytest.raises(ConfigError) as caught:
        load_config(text, REGISTRY)
    assert message in str(caught.value)
