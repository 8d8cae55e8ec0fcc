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


def test_the_pick_is_the_head_of_the_shuffled_endpoints_stably_sorted_by_score() -> None:
    """The documented algorithm, draw for draw: a seeded run picks the same endpoints, ties included."""
    rng = random.Random(7)
    pool = [Endpoint.create(f"10.0.1.{n}", 8000) for n in range(1, 60)]
    for seed in range(200):
        n = rng.choice([1, 2, 3, 8])
        candidates = scored(*((e, rng.choice([0.0, 0.5, 1.0, 2.5, rng.random()])) for e in rng.sample(pool, 30)))
        shuffled = list(candidates)
        random.Random(seed).shuffle(shuffled)
        expected = [s.endpoint for s in sorted(shuffled, key=lambda s: s.score, reverse=True)[:n]]
        assert picker(n, seed).pick(CycleState(), REQUEST, candidates) == expected
