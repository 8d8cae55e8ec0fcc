import pytest
from pydantic import ValidationError

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    ProfileResult,
    SchedulingResult,
    Scorer,
)
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.producers.approx_prefix_cache import ApproxPrefixCacheProducer

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
PROMPT = "".join(chr(ord("a") + i % 26) for i in range(256))  # 4 blocks of 64 characters
KEY = prefix_match_key("approx-prefix-cache-producer")


def request(prompt: str) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})


def producer(**params: object) -> ApproxPrefixCacheProducer:
    return ApproxPrefixCacheProducer(
        "approx-prefix-cache-producer", ApproxPrefixCacheProducer.Params.model_validate(params)
    )


def result(target: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    results = {"decode": ProfileResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    return SchedulingResult(profile_results=results, primary_profile="decode")


def serve(p: ApproxPrefixCacheProducer, prompt: str, target: Endpoint, prefill: Endpoint | None = None) -> None:
    state = CycleState()
    p.produce(state, request(prompt), [A, B, C])
    p.pre_request(state, request(prompt), result(target, prefill))


def produced(p: ApproxPrefixCacheProducer, prompt: str, endpoints: list[Endpoint]) -> PrefixMatchInfo:
    state = CycleState()
    p.produce(state, request(prompt), endpoints)
    info = state.read(KEY)
    assert info is not None
    return info


def test_publishes_the_consecutive_blocks_matched_by_every_candidate_and_scores_nothing() -> None:
    p = producer()
    assert not isinstance(p, Scorer)
    serve(p, PROMPT[:192], A)  # A holds blocks 0-2
    serve(p, PROMPT[:64], B)  # B holds block 0
    info = produced(p, PROMPT, [A, B, C])
    assert dict(info.matched_blocks) == {A.id: 3, B.id: 1}
    assert (info.total_blocks, info.block_chars, info.prompt_chars) == (4, 64, 256)
    # what the consumers compute from it: A has 3 of 4 blocks, B must prefill ceil((256 - 64) / 4) = 48 tokens
    assert info.uncached_tokens(A.id) == 16
    assert info.uncached_tokens(B.id) == 48
    assert info.any_hit()


def test_prefill_targets_are_recorded_too() -> None:
    p = producer()
    serve(p, PROMPT, A, prefill=C)
    assert dict(produced(p, PROMPT, [A, B, C]).matched_blocks) == {A.id: 4, C.id: 4}


def test_max_prefix_tokens_to_match_replaces_the_block_cap() -> None:
    # 40 tokens in blocks of 16 tokens (64 characters): 40 * 4 // 64 = 2 blocks
    p = producer(maxPrefixTokensToMatch=40, maxPrefixBlocksToMatch=256)
    serve(p, PROMPT, A)
    info = produced(p, PROMPT, [A, B])
    assert (info.total_blocks, dict(info.matched_blocks)) == (2, {A.id: 2})
    # a cap below one block still matches one
    assert produced(producer(maxPrefixTokensToMatch=1), PROMPT, [A]).total_blocks == 1
    # 0 (the default) leaves maxPrefixBlocksToMatch in force
    assert produced(producer(maxPrefixBlocksToMatch=3), PROMPT, [A]).total_blocks == 3


def test_parameters_are_llm_d_names_with_the_scorer_defaults() -> None:
    params = ApproxPrefixCacheProducer.Params()
    assert (params.auto_tune, params.block_size_tokens, params.max_prefix_blocks_to_match) == (True, 16, 256)
    assert (params.lru_capacity_per_server, params.max_prefix_tokens_to_match) == (31_250, 0)
    with pytest.raises(ValidationError):
        ApproxPrefixCacheProducer.Params.model_validate({"maxPrefixTokensToMatch": -1})
    with pytest.raises(ValidationError):
        ApproxPrefixCacheProducer.Params.model_validate({"blockSizeTokens": 16, "hashBlockSize": 64})


def test_auto_tune_bounds_each_endpoint_by_its_engine_blocks() -> None:
    # 2 engine blocks of 32 tokens = 4 of our 16-token blocks remembered per endpoint; off, 31,250
    small = Endpoint.create("10.0.0.9", 8000)
    small.metrics = EndpointMetrics(num_gpu_blocks=2, block_size=32)
    long_prompt = PROMPT * 2  # 8 blocks
    for params, matched in (({}, 4), ({"autoTune": False}, 8)):
        p = producer(**params)
        state = CycleState()
        p.produce(state, request(long_prompt), [small])
        p.pre_request(state, request(long_prompt), result(small))
        assert produced(p, long_prompt, [small]).matched_blocks.get(small.id, 0) == matched


def test_fleet_peers_record_what_a_replica_shared() -> None:
    here, peer = producer(), producer()
    state = CycleState()
    here.produce(state, request(PROMPT), [A, B])
    here.pre_request(state, request(PROMPT), result(B))
    shared = here.share(state, request(PROMPT), result(B))
    peer.adopt(CycleState(), shared, {A.id: A, B.id: B})
    assert dict(produced(peer, PROMPT, [A, B]).matched_blocks) == {B.id: 4}


def test_an_endpoint_that_left_the_pool_is_forgotten() -> None:
    p = producer()
    serve(p, PROMPT, A)
    p.on_endpoints_removed([A.id])
    assert dict(produced(p, PROMPT, [A]).matched_blocks) == {}
