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
)
from kvroute.router.plugins.prefix import hashing
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
PROMPT = "".join(chr(ord("a") + i % 26) for i in range(256))  # 4 blocks of 64 characters


def request(prompt: str) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})


def scorer(**params: object) -> PrefixCacheScorer:
    return PrefixCacheScorer("prefix-cache-scorer", PrefixCacheScorer.Params.model_validate(params))


def result(target: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    results = {"decode": ProfileResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    return SchedulingResult(profile_results=results, primary_profile="decode")


def serve(s: PrefixCacheScorer, prompt: str, target: Endpoint, prefill: Endpoint | None = None) -> dict[str, float]:
    """One request through the scorer: score, then record at pre_request as the runner would."""
    state = CycleState()
    scores = s.score(state, request(prompt), [A, B, C])
    s.pre_request(state, request(prompt), result(target, prefill))
    return scores


def test_score_is_the_share_of_consecutive_blocks_matched() -> None:
    s = scorer()
    assert serve(s, PROMPT[:192], A) == {A.id: 0.0, B.id: 0.0, C.id: 0.0}
    serve(s, PROMPT[:64], B)
    assert s.score(CycleState(), request(PROMPT), [A, B, C]) == {A.id: 0.75, B.id: 0.25, C.id: 0.0}


def test_the_partial_last_block_is_matched_only_by_the_same_characters() -> None:
    s = scorer()
    serve(s, PROMPT[:200], A)  # blocks: 64, 64, 64, 8 characters
    assert s.score(CycleState(), request(PROMPT[:200]), [A]) == {A.id: 1.0}
    assert s.score(CycleState(), request(PROMPT), [A]) == {A.id: 0.75}


def test_match_info_is_published_for_other_plugins() -> None:
    s = scorer()
    serve(s, PROMPT[:192], A)
    serve(s, PROMPT[:64], B)
    state = CycleState()
    s.score(state, request(PROMPT + "x" * 10), [A, B])
    s.score(state, request(PROMPT + "x" * 10), [C])  # a second profile adds its candidates
    info = state.require(prefix_match_key("prefix-cache-scorer"))
    assert info == PrefixMatchInfo({A.id: 3, B.id: 1}, total_blocks=5, block_chars=64, prompt_chars=266)
    assert info.uncached_tokens(A.id) == 19  # ceil((266 - 192) / 4)
    assert info.uncached_tokens(C.id) == 67
    assert info.uncached_tokens_of([C.id, A.id, B.id, A.id]) == [67, 19, 51, 19]  # B: ceil((266 - 64) / 4)


def test_an_empty_prompt_scores_zero() -> None:
    s = scorer()
    serve(s, "", A)
    assert s.score(CycleState(), request(""), [A, B]) == {A.id: 0.0, B.id: 0.0}


def test_the_prefill_target_is_recorded_too() -> None:
    s = scorer()
    serve(s, PROMPT, A, prefill=B)
    assert s.score(CycleState(), request(PROMPT), [A, B, C]) == {A.id: 1.0, B.id: 1.0, C.id: 0.0}


def test_hashes_are_shared_with_later_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = hashing.block_hashes

    def counting(text: str, seed: int, block_chars: int, max_blocks: int) -> list[int]:
        calls.append(text)
        return real(text, seed, block_chars, max_blocks)

    monkeypatch.setattr(hashing, "block_hashes", counting)
    serve(scorer(), PROMPT, A, prefill=B)
    assert len(calls) == 1


def test_blocks_past_the_maximum_are_ignored() -> None:
    s = scorer(maxPrefixBlocksToMatch=2)
    serve(s, PROMPT[:128], A)
    assert s.score(CycleState(), request(PROMPT), [A]) == {A.id: 1.0}


def with_gpu_blocks(endpoint: Endpoint, blocks: int, block_size: int | None) -> Endpoint:
    tuned = Endpoint.create(endpoint.address, endpoint.port)
    tuned.metrics = EndpointMetrics(num_gpu_blocks=blocks, block_size=block_size)
    return tuned


@pytest.mark.parametrize(
    ("params", "gpu_blocks", "engine_block", "expected"),
    [
        ({}, 2, 16, 0.5),  # 2 engine blocks of 16 tokens = 2 of ours: the first 2 of 4 blocks kept
        ({}, 2, 32, 1.0),  # 2 blocks of 32 tokens = 4 of ours
        ({}, 3, None, 0.75),  # engine block size unknown: num_gpu_blocks as is
        ({}, 0, 16, 1.0),  # no capacity reported: lruCapacityPerServer
        ({"autoTune": False, "lruCapacityPerServer": 1}, 100, 16, 0.25),
    ],
)
def test_capacity_per_endpoint(
    params: dict[str, object], gpu_blocks: int, engine_block: int | None, expected: float
) -> None:
    s = scorer(**params)
    target = with_gpu_blocks(A, gpu_blocks, engine_block)
    serve(s, PROMPT, target)
    assert s.score(CycleState(), request(PROMPT), [target]) == {A.id: expected}


def test_endpoints_that_left_the_pool_are_forgotten() -> None:
    s = scorer()
    serve(s, PROMPT, A)
    serve(s, PROMPT[:128], B)

    s.on_endpoints_removed([A.id, C.id])  # C was never recorded

    assert s.score(CycleState(), request(PROMPT), [A, B]) == {A.id: 0.0, B.id: 0.5}
    serve(s, PROMPT[:64], A)  # the id comes back: a new endpoint, starting from nothing
    assert s.score(CycleState(), request(PROMPT), [A, B]) == {A.id: 0.25, B.id: 0.5}


def test_params_use_the_config_names_and_defaults() -> None:
    params = PrefixCacheScorer.Params()
    assert (params.block_chars, params.max_prefix_blocks_to_match) == (64, 256)
    assert (params.lru_capacity_per_server, params.auto_tune) == (31_250, True)
    assert PrefixCacheScorer.Params.model_validate({"blockSizeTokens": 8}).block_chars == 32
    assert PrefixCacheScorer.Params.model_validate({"hashBlockSize": 50}).block_chars == 50
    with pytest.raises(ValidationError, match="not both"):
        PrefixCacheScorer.Params.model_validate({"hashBlockSize": 64, "blockSizeTokens": 16})
    with pytest.raises(ValidationError):
        PrefixCacheScorer.Params.model_validate({"blockSize": 16})


def test_hash_block_size_sets_the_block_in_characters() -> None:
    s = scorer(hashBlockSize=128)
    serve(s, PROMPT[:128], A)
    assert s.score(CycleState(), request(PROMPT), [A]) == {A.id: 0.5}
