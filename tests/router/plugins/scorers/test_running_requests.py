from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest
from kvroute.router.plugins.scorers.running_requests import RunningRequestsSizeScorer

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def endpoint(n: int, running: int) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(running=running, stale=False)
    return e


def test_fewer_running_requests_score_higher_min_max() -> None:
    endpoints = [endpoint(1, 2), endpoint(2, 4), endpoint(3, 6)]
    scores = RunningRequestsSizeScorer("r", RunningRequestsSizeScorer.Params()).score(CycleState(), REQUEST, endpoints)
    assert scores == {"10.0.0.1:8000": 1.0, "10.0.0.2:8000": 0.5, "10.0.0.3:8000": 0.0}


def test_equal_running_counts_all_score_one() -> None:
    scores = RunningRequestsSizeScorer("r", RunningRequestsSizeScorer.Params()).score(
        CycleState(), REQUEST, [endpoint(1, 3), endpoint(2, 3)]
    )
    assert scores == {"10.0.0.1:8000": 1.0, "10.0.0.2:8000": 1.0}
