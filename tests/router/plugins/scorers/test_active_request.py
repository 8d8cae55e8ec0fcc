import pydantic
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
from kvroute.router.plugins.scorers.active_request import ActiveRequestScorer

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))


def request(rid: str) -> LLMRequest:
    return LLMRequest(request_id=rid, model="m", api=ApiKind.CHAT, prompt="hi", body={}, headers={})


def result(*endpoints: Endpoint) -> SchedulingResult:
    return SchedulingResult(profile_results={"default": ProfileResult(tuple(endpoints))}, primary_profile="default")


def send(scorer: ActiveRequestScorer, target: Endpoint, fallback: Endpoint | None = None) -> CycleState:
    state = CycleState()
    scorer.pre_request(state, request("r"), result(target, *([fallback] if fallback else [])))
    return state


def scorer_with(params: dict[str, object] | None = None) -> ActiveRequestScorer:
    return ActiveRequestScorer("active", ActiveRequestScorer.Params.model_validate(params or {}))


def test_counts_primary_target_only_and_scores_min_max_lower_better() -> None:
    scorer = scorer_with()
    for _ in range(2):
        send(scorer, B, fallback=A)
    for _ in range(4):
        send(scorer, C)
    assert (scorer.in_flight(A.id), scorer.in_flight(B.id), scorer.in_flight(C.id)) == (0, 2, 4)
    assert scorer.score(CycleState(), request("n"), [A, B, C]) == {A.id: 1.0, B.id: 0.5, C.id: 0.0}


def test_idle_threshold_and_max_busy_score() -> None:
    scorer = scorer_with({"idleThreshold": 1, "maxBusyScore": 0.5})
    for target, count in ((A, 1), (B, 3), (C, 5)):
        for _ in range(count):
            send(scorer, target)
    # A is idle (1 <= 1); B: 0.5 * (5 - 3) / (5 - 1) = 0.25; C: 0.5 * 0 = 0.
    assert scorer.score(CycleState(), request("n"), [A, B, C]) == {A.id: 1.0, B.id: 0.25, C.id: 0.0}
    # With no idle endpoint the least busy scores maxBusyScore: 0.5 * (5 - 3) / (5 - 3).
    assert scorer.score(CycleState(), request("n"), [B, C]) == {B.id: 0.5, C.id: 0.0}


def test_count_returns_to_zero_after_completion_released_exactly_once() -> None:
    scorer = scorer_with()
    states = [send(scorer, A) for _ in range(3)]
    assert scorer.in_flight(A.id) == 3
    scorer.on_response_complete(states[0], request("r"), A, ResponseInfo(status=200))
    scorer.on_response_complete(states[0], request("r"), A, ResponseInfo(status=200))
    assert scorer.in_flight(A.id) == 2
    scorer.on_response_complete(states[1], request("r"), None, ResponseInfo(error="client disconnected"))
    scorer.on_response_complete(states[2], request("r"), A, ResponseInfo(error="upstream 502"))
    assert scorer.in_flight(A.id) == 0
    assert scorer.score(CycleState(), request("n"), [A, B]) == {A.id: 1.0, B.id: 1.0}


def test_completion_without_pre_request_changes_nothing() -> None:
    scorer = scorer_with()
    send(scorer, A)
    scorer.on_response_complete(CycleState(), request("other"), A, ResponseInfo(status=200))
    assert scorer.in_flight(A.id) == 1


def test_two_instances_track_separately() -> None:
    first, second = ActiveRequestScorer("one"), ActiveRequestScorer("two")
    state = CycleState()
    first.pre_request(state, request("r"), result(A))
    second.pre_request(state, request("r"), result(A))
    first.on_response_complete(state, request("r"), A, ResponseInfo(status=200))
    assert (first.in_flight(A.id), second.in_flight(A.id)) == (0, 1)


def test_max_busy_score_must_be_within_unit_interval() -> None:
    with pytest.raises(pydantic.ValidationError):
        ActiveRequestScorer.Params.model_validate({"maxBusyScore": 1.5})
