import random
from collections import Counter

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
from kvroute.router.plugins.pickers.random_picker import RandomPicker

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
POOL = [ScoredEndpoint(Endpoint.create(f"10.0.0.{n}", 8000), score) for n, score in ((1, 1.0), (2, 0.0), (3, 0.0))]


def picker(n: int, seed: int) -> RandomPicker:
    return RandomPicker("rnd", RandomPicker.Params.model_validate({"maxNumOfEndpoints": n}), rng=random.Random(seed))


def test_uniform_whatever_the_scores() -> None:
    p = picker(1, seed=1)
    counts = Counter(p.pick(CycleState(), REQUEST, POOL)[0].id for _ in range(3000))
    assert all(900 < c < 1100 for c in counts.values()), counts
    assert len(counts) == 3


def test_distinct_endpoints_up_to_max_num() -> None:
    two = picker(2, seed=2).pick(CycleState(), REQUEST, POOL)
    assert len(two) == len(set(two)) == 2
    assert sorted(e.id for e in picker(9, seed=3).pick(CycleState(), REQUEST, POOL)) == sorted(
        s.endpoint.id for s in POOL
    )


def test_same_seed_same_picks() -> None:
    first, second = picker(1, seed=9), picker(1, seed=9)
    assert [first.pick(CycleState(), REQUEST, POOL) for _ in range(20)] == [
        second.pick(CycleState(), REQUEST, POOL) for _ in range(20)
    ]
