from __future__ import annotations

import pytest

from kvroute.router.plugins.flowcontrol.usage_limits import PriorityHoldbackPolicy, StaticUsageLimitPolicy


def holdback(strategy: str, low: float, high: float = 1.0) -> PriorityHoldbackPolicy:
    params = PriorityHoldbackPolicy.Params.model_validate({"strategy": strategy, "minCeiling": low, "maxCeiling": high})
    return PriorityHoldbackPolicy("holdback", params)


def test_static_policy_gives_every_band_its_threshold() -> None:
    policy = StaticUsageLimitPolicy("static", StaticUsageLimitPolicy.Params(threshold=0.8))
    assert policy.ceilings([100, 0, -1]) == {100: 0.8, 0: 0.8, -1: 0.8}
    assert StaticUsageLimitPolicy("default").ceilings([3]) == {3: 1.0}


def test_stepwise_spread_steps_evenly_by_rank() -> None:
    assert holdback("stepwise-spread", 0.4, 0.9).ceilings([100, 50, -7]) == pytest.approx({100: 0.9, 50: 0.65, -7: 0.4})


def test_linear_proportional_follows_the_priority_values() -> None:
    ceilings = holdback("linear-proportional", 0.5).ceilings([100, 90, 0])
    assert ceilings == pytest.approx({100: 1.0, 90: 0.95, 0: 0.5})


def test_a_single_active_priority_gets_the_highest_ceiling() -> None:
    assert holdback("stepwise-spread", 0.2, 0.9).ceilings([5]) == {5: 0.9}
    assert holdback("linear-proportional", 0.2).ceilings([]) == {}
