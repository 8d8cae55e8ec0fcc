import pytest

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    ProfileResult,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.token_load import TokenLoadScorer

A, B, C, D = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3, 4))


def request(prompt: str) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})


def result(*endpoints: Endpoint) -> SchedulingResult:
    return SchedulingResult(profile_results={"default": ProfileResult(tuple(endpoints))}, primary_profile="default")


def scorer(threshold: int) -> TokenLoadScorer:
    return TokenLoadScorer("tokens", TokenLoadScorer.Params.model_validate({"queueThresholdTokens": threshold}))


def send(s: TokenLoadScorer, target: Endpoint, prompt_chars: int) -> CycleState:
    state = CycleState()
    s.pre_request(state, request("x" * prompt_chars), result(target))
    return state


def test_without_prefix_match_info_every_prompt_token_is_charged_chars_over_four_rounded_up() -> None:
    s = scorer(1000)
    for chars in (1, 4, 5, 4000):
        send(s, A, chars)
    assert s.in_flight_tokens(A.id) == 1 + 1 + 2 + 1000


def test_only_uncached_tokens_are_charged_when_the_prefix_plugin_published_its_matches() -> None:
    s = scorer(1000)
    state = CycleState()
    # 1000 chars in blocks of 64 chars; the target matched 10 blocks: ceil((1000 - 640) / 4) = 90 tokens
    info = PrefixMatchInfo(matched_blocks={A.id: 10}, total_blocks=16, block_chars=64, prompt_chars=1000)
    state.write(prefix_match_key("prefix-cache-scorer"), info)
    s.pre_request(state, request("x" * 1000), result(A))
    assert s.in_flight_tokens(A.id) == 90

    other = CycleState()
    other.write(prefix_match_key("another-prefix-plugin"), info)
    s.pre_request(other, request("x" * 1000), result(B))
    assert s.in_flight_tokens(B.id) == 250


def test_score_is_one_minus_in_flight_tokens_over_threshold_capped() -> None:
    s = scorer(1000)
    send(s, B, 1000)  # 250 tokens
    send(s, C, 4000)  # 1000 tokens
    send(s, D, 8000)
    send(s, D, 8000)  # 4000 tokens
    assert s.score(CycleState(), request(""), [A, B, C, D]) == {A.id: 1.0, B.id: 0.75, C.id: 0.0, D.id: 0.0}


def test_default_threshold() -> None:
    s = TokenLoadScorer("tokens")
    send(s, A, 4 * 1_048_576)
    assert s.score(CycleState(), request(""), [A]) == pytest.approx({A.id: 0.75})


def test_released_at_first_chunk_with_tokens_and_not_again_at_completion() -> None:
    s = scorer(1000)
    first = send(s, A, 400)  # 100 tokens
    send(s, A, 800)  # 200 tokens, still prefilling
    assert s.in_flight_tokens(A.id) == 300
    s.on_response_chunk(first, request(""), A, ResponseInfo(status=200), new_tokens=0)
    assert s.in_flight_tokens(A.id) == 300
    s.on_response_chunk(first, request(""), A, ResponseInfo(status=200, output_tokens=1), new_tokens=1)
    assert s.in_flight_tokens(A.id) == 200
    s.on_response_chunk(first, request(""), A, ResponseInfo(status=200, output_tokens=2), new_tokens=1)
    s.on_response_complete(first, request(""), A, ResponseInfo(status=200, output_tokens=2))
    assert s.in_flight_tokens(A.id) == 200


def test_released_at_completion_when_no_tokens_streamed() -> None:
    s = scorer(1000)
    state = send(s, A, 400)
    s.on_response_complete(state, request(""), None, ResponseInfo(error="cancelled"))
    assert s.in_flight_tokens(A.id) == 0
    assert s.score(CycleState(), request(""), [A]) == {A.id: 1.0}
