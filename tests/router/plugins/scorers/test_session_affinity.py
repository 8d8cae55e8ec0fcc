import base64

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ResponseInfo
from kvroute.router.plugins.scorers.session_affinity import (
    SessionAffinityScorer,
    decode_session_token,
    encode_session_token,
)

POOL = [Endpoint.create("10.0.0.1", 8000), Endpoint.create("10.0.0.2", 8000)]


def request(headers: dict[str, str]) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.CHAT, prompt="", body={}, headers=headers)


def test_token_is_base64_of_the_endpoint_id() -> None:
    assert encode_session_token("10.0.0.2:8000") == base64.b64encode(b"10.0.0.2:8000").decode()
    assert encode_session_token("10.0.0.2:8000") == "MTAuMC4wLjI6ODAwMA=="
    assert decode_session_token("MTAuMC4wLjI6ODAwMA==") == "10.0.0.2:8000"


def test_token_names_the_endpoint_that_scores_one() -> None:
    scores = SessionAffinityScorer("s", SessionAffinityScorer.Params()).score(
        CycleState(), request({"x-session-token": "MTAuMC4wLjI6ODAwMA=="}), POOL
    )
    assert scores == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 1.0}


def test_header_name_is_matched_case_insensitively() -> None:
    scores = SessionAffinityScorer("s", SessionAffinityScorer.Params()).score(
        CycleState(), request({"X-Session-Token": "MTAuMC4wLjI6ODAwMA=="}), POOL
    )
    assert scores["10.0.0.2:8000"] == 1.0


def test_missing_or_garbage_token_scores_zero_everywhere() -> None:
    scorer = SessionAffinityScorer("s", SessionAffinityScorer.Params())
    for headers in ({}, {"x-session-token": "not base64!"}, {"x-session-token": "//79"}):
        assert scorer.score(CycleState(), request(headers), POOL) == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 0.0}


def test_response_carries_the_token_that_routes_the_next_request_back() -> None:
    scorer = SessionAffinityScorer("s", SessionAffinityScorer.Params())
    response = ResponseInfo(status=200, headers={"content-type": "application/json"})
    scorer.on_response_headers(CycleState(), request({}), POOL[1], response)
    assert response.client_headers == {"x-session-token": "MTAuMC4wLjI6ODAwMA=="}

    follow_up = request({"x-session-token": response.client_headers["x-session-token"]})
    assert scorer.score(CycleState(), follow_up, POOL) == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 1.0}
