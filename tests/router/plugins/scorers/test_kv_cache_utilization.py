import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest
from kvroute.router.plugins.scorers.kv_cache_utilization import KVCacheUtilizationScorer

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def endpoint(n: int, kv_usage: float) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(kv_usage=kv_usage, stale=False)
    return e


def test_score_is_one_minus_kv_usage() -> None:
    endpoints = [endpoint(1, 0.0), endpoint(2, 0.25), endpoint(3, 1.0)]
    scores = KVCacheUtilizationScorer("kv", KVCacheUtilizationScorer.Params()).score(CycleState(), REQUEST, endpoints)
    assert scores == pytest.approx({"10.0.0.1:8000": 1.0, "10.0.0.2:8000": 0.75, "10.0.0.3:8000": 0.0})


def test_score_is_absolute_not_normalised_across_endpoints() -> None:
    scores = KVCacheUtilizationScorer("kv", KVCacheUtilizationScorer.Params()).score(
        CycleState(), REQUEST, [endpoint(1, 0.9), endpoint(2, 0.9)]
    )
    assert scores == pytest.approx({"10.0.0.1:8000": 0.1, "10.0.0.2:8000": 0.1})


def test_out_of_range_usage_is_clamped() -> None:
    scores = KVCacheUtilizationScorer("kv", KVCacheUtilizationScorer.Params()).score(
        CycleState(), REQUEST, [endpoint(1, 1.2), endpoint(2, -0.1)]
    )
    assert scores == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 1.0}
