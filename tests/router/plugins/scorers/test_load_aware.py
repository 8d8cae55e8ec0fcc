import pydantic
import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest
from kvroute.router.plugins.scorers.load_aware import LoadAwareScorer

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def endpoint(n: int, waiting: int) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(waiting=waiting, stale=False)
    return e


def test_default_threshold_128() -> None:
    endpoints = [endpoint(1, 0), endpoint(2, 32), endpoint(3, 128), endpoint(4, 500)]
    scores = LoadAwareScorer("load").score(CycleState(), REQUEST, endpoints)
    assert scores == {"10.0.0.1:8000": 0.5, "10.0.0.2:8000": 0.375, "10.0.0.3:8000": 0.0, "10.0.0.4:8000": 0.0}


def test_configured_threshold() -> None:
    scorer = LoadAwareScorer("load", LoadAwareScorer.Params.model_validate({"threshold": 10}))
    scores = scorer.score(CycleState(), REQUEST, [endpoint(1, 1), endpoint(2, 5)])
    assert scores == pytest.approx({"10.0.0.1:8000": 0.45, "10.0.0.2:8000": 0.25})


def test_threshold_must_be_positive() -> None:
    with pytest.raises(pydantic.ValidationError):
        LoadAwareScorer.Params.model_validate({"threshold": 0})
