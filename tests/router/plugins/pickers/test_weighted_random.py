import random
from collections import Counter

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
from kvroute.router.plugins.pickers.weighted_random import WeightedRandomPicker

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
A, B, C, D = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3, 4))


def picker(n: int, seed: int) -> WeightedRandomPicker:
    params = WeightedRandomPicker.Params.model_validate({"maxNumOfEndpoints": n})
    return WeightedRandomPicker("w", params, rng=random.Random(seed))


def test_a_res_keys_from_the_seeded_generator() -> None:
    scored = [ScoredEndpoint(A, 1.0), ScoredEndpoint(B, 2.0), ScoredEndpoint(C, 4.0)]
    draws = random.Random(5)
    u = [draws.random() for _ in scored]  # one U per endpoint, in input order
    keys = {A: u[0] ** (1 / 1.0), B: u[1] ** (1 / 2.0), C: u[2] ** (1 / 4.0)}
    expected = sorted(keys, key=keys.__getitem__, reverse=True)
    assert picker(3, seed=5).pick(CycleState(), REQUEST, scored) == expected


def test_target_probability_is_proportional_to_score() -> None:
    p = picker(1, seed=11)
    scored = [ScoredEndpoint(A, 3.0), ScoredEndpoint(B, 1.0)]
    counts = Counter(p.pick(CycleState(), REQUEST, scored)[0] for _ in range(4000))
    assert abs(counts[A] / 4000 - 0.75) < 0.03


def test_zero_scores_come_after_every_positive_score() -> None:
    scored = [ScoredEndpoint(A, 0.0), ScoredEndpoint(B, 0.01), ScoredEndpoint(C, 0.0), ScoredEndpoint(D, 5.0)]
    for seed in range(50):
        picked = picker(4, seed).pick(CycleState(), REQUEST, scored)
        assert set(picked[:2]) == {B, D}
        assert set(picked[2:]) == {A, C}


def test_all_zero_scores_still_pick() -> None:
    scored = [ScoredEndpoint(A, 0.0), ScoredEndpoint(B, 0.0)]
    assert len(picker(1, seed=0).pick(CycleState(), REQUEST, scored)) == 1
