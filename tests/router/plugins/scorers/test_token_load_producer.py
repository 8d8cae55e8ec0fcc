"""`token-load-scorer` reading `inflight-load-producer`, as llm-d configures it."""

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
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer
from kvroute.router.plugins.scorers.token_load import TokenLoadScorer

A, B = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2))


def request(prompt_chars: int) -> LLMRequest:
    return LLMRequest(
        request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="x" * prompt_chars, body={}, headers={}
    )


def result(target: Endpoint) -> SchedulingResult:
    return SchedulingResult(profile_results={"default": ProfileResult((target,))}, primary_profile="default")


def scorer(threshold: int) -> TokenLoadScorer:
    return TokenLoadScorer(
        "token-load-scorer", TokenLoadScorer.Params.model_validate({"queueThresholdTokens": threshold})
    )


def cycle(producer: InFlightLoadProducer, prompt_chars: int, info: PrefixMatchInfo | None = None) -> CycleState:
    state = CycleState()
    if info is not None:
        state.write(prefix_match_key("approx-prefix-cache-producer"), info)
    producer.produce(state, request(prompt_chars), [A, B])
    return state


def test_score_adds_this_requests_uncached_tokens_to_the_producers_in_flight_tokens() -> None:
    producer, s = InFlightLoadProducer("inflight-load-producer"), scorer(1000)
    earlier = cycle(producer, 800)
    producer.pre_request(earlier, request(800), result(A))  # 200 tokens in flight on A
    # a 400-character prompt of which A cached 100 characters: 1 - (200 + 75) / 1000 = 0.725; B: 1 - 100 / 1000
    state = cycle(producer, 400, PrefixMatchInfo({A.id: 1}, 4, 100, 400))
    assert s.score(state, request(400), [A, B]) == {A.id: 0.725, B.id: 0.9}
    # capped at the threshold
    assert scorer(250).score(state, request(400), [A, B]) == {A.id: 0.0, B.id: 0.6}


def test_with_the_producer_the_scorer_keeps_no_accounting_of_its_own() -> None:
    producer, s = InFlightLoadProducer("inflight-load-producer"), scorer(1000)
    state = cycle(producer, 800)
    s.pre_request(state, request(800), result(A))
    assert s.in_flight_tokens(A.id) == 0
    assert s.share(state, request(800), result(A)) is None
    s.on_response_complete(state, request(800), A, ResponseInfo(status=200))


def test_without_the_producer_the_scorer_counts_for_itself_as_before() -> None:
    s = scorer(1000)
    state = CycleState()
    s.pre_request(state, request(1000), result(A))
    assert s.in_flight_tokens(A.id) == 250
    assert s.score(CycleState(), request(400), [A, B]) == {A.id: 0.75, B.id: 1.0}


def test_a_producer_of_another_name_is_read_only_when_named() -> None:
    producer = InFlightLoadProducer("load")
    earlier = cycle(producer, 800)
    producer.pre_request(earlier, request(800), result(A))
    state = cycle(producer, 400)
    assert scorer(1000).score(state, request(400), [A]) == {A.id: 1.0}
    named = TokenLoadScorer(
        "t", TokenLoadScorer.Params.model_validate({"queueThresholdTokens": 1000, "inFlightLoadProducerName": "load"})
    )
    assert named.score(state, request(400), [A]) == {A.id: 0.7}
