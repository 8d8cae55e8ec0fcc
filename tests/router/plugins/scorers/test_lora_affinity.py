from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest, LoraInfo
from kvroute.router.plugins.scorers.lora_affinity import LoraAffinityScorer


def request(model: str) -> LLMRequest:
    return LLMRequest(request_id="r", model=model, api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def endpoint(n: int, max_loras: int, running: tuple[str, ...] = (), waiting: tuple[str, ...] = ()) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(lora=LoraInfo(max_loras=max_loras, running=running, waiting=waiting), stale=False)
    return e


POOL = [
    endpoint(1, 2, running=("sql",)),  # running, and a free slot too: running wins
    endpoint(2, 2, running=("chat",)),  # free slot
    endpoint(3, 2, running=("chat",), waiting=("sql",)),  # waiting, no free slot
    endpoint(4, 2, running=("chat", "math")),  # full, adapter absent
    endpoint(5, 3, running=("chat",), waiting=("sql",)),  # waiting, but a free slot scores higher
]


def test_adapter_scores_running_free_slot_waiting_none() -> None:
    scores = LoraAffinityScorer("lora", LoraAffinityScorer.Params()).score(CycleState(), request("sql"), POOL)
    assert scores == {
        "10.0.0.1:8000": 1.0,
        "10.0.0.2:8000": 0.8,
        "10.0.0.3:8000": 0.6,
        "10.0.0.4:8000": 0.0,
        "10.0.0.5:8000": 0.8,
    }


def test_base_model_scores_one_everywhere() -> None:
    scores = LoraAffinityScorer("lora", LoraAffinityScorer.Params()).score(CycleState(), request("llama-3-8b"), POOL)
    assert set(scores.values()) == {1.0}
    assert len(scores) == len(POOL)
