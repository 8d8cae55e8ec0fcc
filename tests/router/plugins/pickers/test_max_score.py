import random
from collections import Counter

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
from kvroute.router.plugins.pickers.max_score import MaxScorePicker

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))


def picker(n: int = 1, seed: int = 0) -> MaxScorePicker:
    params = MaxScorePicker.Params.model_validate({"maxNumOfEndpoints": n})
    return MaxScorePicker("max", params, rng=random.Random(seed))


def scored(*pairs: tuple[Endpoint, float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(e, s) for e, s in pairs]


def test_highest_score_is_the_target() -> None:
    assert picker().pick(CycleState(), REQUEST, scored((A, 0.2), (B, 0.9), (C, 0.5))) == [B]


def test_max_num_of_endpoints_returns_fallbacks_by_descending_score() -> None:
    assert picker(2).pick(CycleState(), REQUEST, scored((A, 0.2), (B, 0.9), (C, 0.5))) == [B, C]
    assert picker(5).pick(CycleState(), REQUEST, scored((A, 0.2), (B, 0.9))) == [B, A]


def test_ties_break_at_random_and_never_to_a_lower_score() -> None:
    p = picker(seed=42)
    counts = Counter(p.pick(CycleState(), REQUEST, scored((A, 3.0), (B, 3.0), (C, 1.0)))[0].id for _ in range(400))
    assert set(counts) == {A.id, B.id}
    assert 150 < counts[A.id] < 250


def test_no_endpoints_no_pick() -> None:
    assert picker().pick(CycleState(), REQUEST, []) == []
