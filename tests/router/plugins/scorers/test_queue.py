from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest
from kvroute.router.plugins.scorers.queue import QueueScorer

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def endpoint(n: int, waiting: int) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(waiting=waiting, stale=False)
    return e


def test_shorter_queue_scores_higher_min_max() -> None:
    endpoints = [endpoint(1, 0), endpoint(2, 5), endpoint(3, 10)]
    scores = QueueScorer("queue-scorer", QueueScorer.Params()).score(CycleState(), REQUEST, endpoints)
    assert scores == {"10.0.0.1:8000": 1.0, "10.0.0.2:8000": 0.5, "10.0.0.3:8000": 0.0}


def test_equal_queues_all_score_one() -> None:
    scores = QueueScorer("queue-scorer", QueueScorer.Params()).score(
        CycleState(), REQUEST, [endpoint(1, 4), endpoint(2, 4)]
    )
    assert scores == {"10.0.0.1:8000": 1.0, "10.0.0.2:8000": 1.0}
