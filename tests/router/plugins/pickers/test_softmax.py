import random
from collections import Counter

import pydantic
import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
from kvroute.router.plugins.pickers.softmax import SoftmaxPicker

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))


def picker(temperature: float, n: int = 1, seed: int = 0) -> SoftmaxPicker:
    params = SoftmaxPicker.Params.model_validate({"temperature": temperature, "maxNumOfEndpoints": n})
    return SoftmaxPicker("soft", params, rng=random.Random(seed))


def scored(a: float, b: float, c: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(A, a), ScoredEndpoint(B, b), ScoredEndpoint(C, c)]


def test_temperature_zero_is_argmax_with_random_tie_break() -> None:
    assert picker(0.0, n=3).pick(CycleState(), REQUEST, scored(0.1, 0.7, 0.4)) == [B, C, A]
    p = picker(0.0, seed=3)
    counts = Counter(p.pick(CycleState(), REQUEST, scored(2.0, 2.0, 1.0))[0] for _ in range(400))
    assert set(counts) == {A, B}
    assert 150 < counts[A] < 250


def test_default_temperature_is_zero() -> None:
    assert SoftmaxPicker.Params().temperature == 0.0


def test_distribution_is_softmax_of_range_normalised_scores() -> None:
    # x = [1, 0.5, 0]; exp(x) / sum(exp(x)) = [0.5065, 0.3072, 0.1863]
    p = picker(1.0, seed=2024)
    draws = 20_000
    counts = Counter(p.pick(CycleState(), REQUEST, scored(2.0, 1.0, 0.0))[0] for _ in range(draws))
    observed = [counts[e] / draws for e in (A, B, C)]
    assert observed == pytest.approx([0.5065, 0.3072, 0.1863], abs=0.015)


def test_lower_temperature_concentrates_on_the_best() -> None:
    # T = 0.25: exp(4x) over x = [1, 0.5, 0] gives [0.8668, 0.1173, 0.0159]
    p = picker(0.25, seed=7)
    counts = Counter(p.pick(CycleState(), REQUEST, scored(2.0, 1.0, 0.0))[0] for _ in range(10_000))
    assert counts[A] / 10_000 == pytest.approx(0.8668, abs=0.015)


def test_only_relative_positions_matter() -> None:
    first, second = picker(0.5, seed=1), picker(0.5, seed=1)
    small = [first.pick(CycleState(), REQUEST, scored(2.0, 1.0, 0.0))[0] for _ in range(50)]
    large = [second.pick(CycleState(), REQUEST, scored(25.0, 15.0, 5.0))[0] for _ in range(50)]
    assert small == large


def test_fallbacks_are_distinct_and_tiny_temperature_orders_by_score() -> None:
    assert picker(1e-6, n=3).pick(CycleState(), REQUEST, scored(0.0, 2.0, 1.0)) == [B, C, A]
    picked = picker(5.0, n=3, seed=8).pick(CycleState(), REQUEST, scored(1.0, 1.0, 0.0))
    assert sorted(e.id for e in picked) == sorted(e.id for e in (A, B, C))


def test_negative_temperature_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        SoftmaxPicker.Params.model_validate({"temperature": -1})
