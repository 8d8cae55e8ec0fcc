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
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer, in_flight_load_key

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
RESPONSE = ResponseInfo(status=200)


def request(prompt_chars: int) -> LLMRequest:
    return LLMRequest(
        request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="x" * prompt_chars, body={}, headers={}
    )


def result(decode: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    results = {"decode": ProfileResult((decode,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    return SchedulingResult(profile_results=results, primary_profile="decode")


def send(
    p: InFlightLoadProducer,
    prompt_chars: int,
    decode: Endpoint,
    prefill: Endpoint | None = None,
    info: PrefixMatchInfo | None = None,
) -> CycleState:
    state = CycleState()
    if info is not None:
        state.write(prefix_match_key("approx-prefix-cache-producer"), info)
    p.produce(state, request(prompt_chars), [A, B, C])
    p.pre_request(state, request(prompt_chars), result(decode, prefill))
    return state


def load(p: InFlightLoadProducer, endpoint: Endpoint) -> tuple[int, int]:
    return p.in_flight_requests(endpoint.id), p.in_flight_tokens(endpoint.id)


def test_only_the_uncached_prompt_tokens_are_charged_when_the_prefix_producer_published_matches() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    # 1000 chars in blocks of 64; A matched 10 blocks: ceil((1000 - 640) / 4) = 90 tokens
    info = PrefixMatchInfo({A.id: 10}, total_blocks=16, block_chars=64, prompt_chars=1000)
    send(p, 1000, A, info=info)
    assert load(p, A) == (1, 90)
    # B matched nothing: all ceil(1000 / 4) = 250 tokens; without any match info, the same
    send(p, 1000, B, info=info)
    send(p, 1001, B)
    assert load(p, B) == (2, 250 + 251)


def test_tokens_are_released_at_the_first_token_and_the_request_at_completion() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    state = send(p, 400, A)
    p.on_response_chunk(state, request(400), A, RESPONSE, 0)  # no output token yet: prefill still running
    assert load(p, A) == (1, 100)
    p.on_response_chunk(state, request(400), A, RESPONSE, 1)
    assert load(p, A) == (1, 0)
    p.on_response_chunk(state, request(400), A, RESPONSE, 3)
    p.on_response_complete(state, request(400), A, RESPONSE)
    p.on_response_complete(state, request(400), A, RESPONSE)  # released once whatever the calls
    assert load(p, A) == (0, 0)


def test_a_request_that_fails_before_any_token_is_released_in_full_at_completion() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    send(p, 400, B)
    state = send(p, 800, B)
    p.on_response_complete(state, request(800), B, ResponseInfo(status=0, error="upstream"))
    assert load(p, B) == (1, 100)


def test_in_p_d_the_prefill_target_is_charged_too_and_released_wholly_at_the_first_token() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    state = send(p, 400, A, prefill=C)
    assert (load(p, A), load(p, C)) == ((1, 100), (1, 100))
    p.on_response_chunk(state, request(400), A, RESPONSE, 1)
    assert (load(p, A), load(p, C)) == ((1, 0), (0, 0))
    p.on_response_complete(state, request(400), A, RESPONSE)
    assert (load(p, A), load(p, C)) == ((0, 0), (0, 0))


def test_the_published_load_is_live_and_prices_the_request_on_each_candidate() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    send(p, 800, A)  # 200 tokens on A
    state = CycleState()
    info = PrefixMatchInfo({A.id: 1}, total_blocks=7, block_chars=64, prompt_chars=400)
    state.write(prefix_match_key("approx-prefix-cache-producer"), info)
    p.produce(state, request(400), [A, B])
    published = state.read(in_flight_load_key("inflight-load-producer"))
    assert published is not None
    assert (published.tokens.get(A.id), published.requests.get(A.id), published.tokens.get(B.id)) == (200, 1, None)
    # this request would add ceil((400 - 64) / 4) = 84 tokens on A, all 100 on B
    assert published.request_tokens(state, request(400), A.id) == 84
    assert published.request_tokens(state, request(400), B.id) == 100


def test_another_prefix_producer_is_read_when_named() -> None:
    p = InFlightLoadProducer(
        "load", InFlightLoadProducer.Params.model_validate({"prefixMatchInfoProducerName": "precise"})
    )
    state = CycleState()
    state.write(prefix_match_key("precise"), PrefixMatchInfo({A.id: 4}, 4, 64, 256))
    p.produce(state, request(256), [A])
    p.pre_request(state, request(256), result(A))
    assert load(p, A) == (1, 0)


def test_fleet_peers_charge_and_release_the_same() -> None:
    here, peer = InFlightLoadProducer("inflight-load-producer"), InFlightLoadProducer("inflight-load-producer")
    state = send(here, 400, A, prefill=C)
    shared = here.share(state, request(400), result(A, C))
    assert shared == [[A.id, 100, True], [C.id, 100, False]]
    peer_state = CycleState()
    peer.adopt(peer_state, shared, {e.id: e for e in (A, B, C)})
    assert (load(peer, A), load(peer, C)) == ((1, 100), (1, 100))
    peer.on_response_chunk(peer_state, request(400), A, RESPONSE, 2)
    peer.on_response_complete(peer_state, request(400), A, RESPONSE)
    assert (load(peer, A), load(peer, C)) == ((0, 0), (0, 0))
    for bad in ([[A.id, -1, True]], [[A.id, "1", True]], "x"):
        with pytest.raises((TypeError, ValueError)):
            peer.adopt(CycleState(), bad, {})


def test_totals_stay_bounded_by_what_is_in_flight() -> None:
    p = InFlightLoadProducer("inflight-load-producer")
    for i in range(1000):
        endpoint = Endpoint.create(f"10.1.{i // 250}.{i % 250 + 1}", 8000)
        state = CycleState()
        p.produce(state, request(40), [endpoint])
        p.pre_request(state, request(40), result(endpoint))
        p.on_response_complete(state, request(40), endpoint, RESPONSE)
    assert p._tokens == {} and p._requests == {}
