import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ProfileResult, SchedulingResult
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.no_hit_lru import NoHitLRUScorer

A, B, C, D = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3, 4))
REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="p" * 256, body={}, headers={})
PREFIX = prefix_match_key("prefix-cache-scorer")


def scorer(**params: object) -> NoHitLRUScorer:
    return NoHitLRUScorer("no-hit-lru-scorer", NoHitLRUScorer.Params.model_validate(params))


def state_with(matched: dict[str, int] | None, key_name: str = "prefix-cache-scorer") -> CycleState:
    state = CycleState()
    if matched is not None:
        state.write(prefix_match_key(key_name), PrefixMatchInfo(matched, 4, 64, 256))
    return state


def serve(
    s: NoHitLRUScorer, target: Endpoint, prefill: Endpoint | None = None, matched: dict[str, int] | None = None
) -> None:
    results = {"decode": ProfileResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    s.pre_request(state_with(matched), REQUEST, SchedulingResult(results, "decode"))


def ranks(s: NoHitLRUScorer, endpoints: list[Endpoint], state: CycleState | None = None) -> dict[str, float]:
    return s.score(state or CycleState(), REQUEST, endpoints)


def test_never_used_endpoints_rank_first_in_the_given_order() -> None:
    assert ranks(scorer(), [A, B, C, D]) == pytest.approx({A.id: 1.0, B.id: 2 / 3, C.id: 1 / 3, D.id: 0.0})


def test_cold_served_endpoints_follow_least_recent_first() -> None:
    s = scorer()
    serve(s, B)
    serve(s, A)
    assert ranks(s, [A, B, C, D]) == pytest.approx({C.id: 1.0, D.id: 2 / 3, B.id: 1 / 3, A.id: 0.0})
    serve(s, B)
    assert ranks(s, [A, B]) == pytest.approx({A.id: 1.0, B.id: 0.0})


def test_a_single_candidate_scores_one() -> None:
    s = scorer()
    serve(s, A)
    assert ranks(s, [A]) == pytest.approx({A.id: 1.0})
    assert ranks(s, []) == pytest.approx({})


def test_warm_requests_score_half_everywhere_and_change_nothing() -> None:
    s = scorer()
    serve(s, A)
    assert ranks(s, [A, B], state_with({B.id: 1})) == pytest.approx({A.id: 0.5, B.id: 0.5})
    serve(s, B, matched={B.id: 1})
    assert ranks(s, [A, B]) == pytest.approx({B.id: 1.0, A.id: 0.0})


def test_a_request_no_endpoint_matched_is_cold() -> None:
    s = scorer()
    serve(s, A, matched={B.id: 0})
    assert ranks(s, [A, B], state_with({})) == pytest.approx({B.id: 1.0, A.id: 0.0})


def test_the_prefill_pick_moves_too() -> None:
    s = scorer()
    serve(s, A, prefill=B)
    assert ranks(s, [A, B, C]) == pytest.approx({C.id: 1.0, A.id: 0.5, B.id: 0.0})


def test_endpoints_that_left_the_pool_count_as_never_used() -> None:
    s = scorer()
    serve(s, B)
    serve(s, A)

    s.on_endpoints_removed([B.id, D.id])  # D was never served

    assert ranks(s, [A, B, C]) == pytest.approx({B.id: 1.0, C.id: 0.5, A.id: 0.0})


def test_the_lru_is_bounded_and_forgotten_endpoints_count_as_never_used() -> None:
    s = scorer(lruSize=2)
    for target in (A, B, C):
        serve(s, target)
    assert ranks(s, [A, B, C]) == pytest.approx({A.id: 1.0, B.id: 0.5, C.id: 0.0})


def test_reads_the_named_prefix_plugin() -> None:
    s = scorer(prefixPluginName="precise")
    assert ranks(s, [A, B], state_with({A.id: 3}, "precise")) == pytest.approx({A.id: 0.5, B.id: 0.5})
    assert ranks(s, [A, B], state_with({A.id: 3})) == pytest.approx({A.id: 1.0, B.id: 0.0})


def test_params() -> None:
    params = NoHitLRUScorer.Params()
    assert (params.lru_size, params.prefix_plugin_name) == (1024, "prefix-cache-scorer")
    with pytest.raises(ValueError):
        NoHitLRUScorer.Params.model_validate({"lruSize": 0})
