"""Usage-limit policies (`flowControl.usageLimitPolicyPluginRef`): how full the pool may get for each band.

The flow controller releases a queued request of a band only while the saturation detector reports a saturation
below that band's ceiling. With one ceiling of 1.0 for all (the default) a band is held only by a saturated pool;
lower ceilings for lower bands keep headroom free for the higher ones, so a critical request that arrives while
the pool is busy finds room at once instead of waiting for a running request to end.

- `static-usage-limit-policy` (GIE's): one ceiling for every band, `threshold` (0, 1], default 1.0.
- `priority-holdback-policy` (llm-d's): `maxCeiling` for the highest active priority, `minCeiling` for the lowest,
  the others in between by `strategy`:
  - `stepwise-spread`: equal steps by rank, c_i = max - i (max - min) / (N - 1), i = 0 for the highest of N;
  - `linear-proportional`: by value, c = min + (p - p_min) / (p_max - p_min) (max - min).
  A single active priority gets `maxCeiling`.

The active priorities are those of the configured bands (`flowControl.priorityBands`), of the objectives of
`flowControl.objectives` and `admission.objectives`, and of the bands holding requests at the moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from kvroute.router.framework import UsageLimitPolicy
from kvroute.router.plugins.params import PluginParams


class StaticUsageLimitPolicy(UsageLimitPolicy):
    type_name = "static-usage-limit-policy"

    class Params(PluginParams):
        threshold: float = Field(default=1.0, gt=0.0, le=1.0, description="The ceiling of every band.")

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._threshold = params.threshold

    def ceilings(self, priorities: Sequence[int]) -> dict[int, float]:
        return dict.fromkeys(priorities, self._threshold)


class PriorityHoldbackPolicy(UsageLimitPolicy):
    type_name = "priority-holdback-policy"

    class Params(PluginParams):
        strategy: Literal["stepwise-spread", "linear-proportional"] = Field(
            description="How the ceilings between the highest and the lowest priority are spread."
        )
        min_ceiling: float = Field(ge=0.0, lt=1.0, description="The ceiling of the lowest active priority.")
        max_ceiling: float = Field(default=1.0, gt=0.0, le=1.0, description="The ceiling of the highest.")

        @model_validator(mode="after")
        def _ordered(self) -> PriorityHoldbackPolicy.Params:
            if self.min_ceiling > self.max_ceiling:
                raise ValueError("minCeiling must not be above maxCeiling")
            return self

    def __init__(self, name: str, params: Params) -> None:
        super().__init__(name, params)
        self._strategy = params.strategy
        self._min = params.min_ceiling
        self._max = params.max_ceiling

    def ceilings(self, priorities: Sequence[int]) -> dict[int, float]:
        count = len(priorities)
        if count <= 1:
            return dict.fromkeys(priorities, self._max)
        span = self._max - self._min
        if self._strategy == "stepwise-spread":
            return {p: self._max - rank * span / (count - 1) for rank, p in enumerate(priorities)}
        highest, lowest = priorities[0], priorities[-1]
        return {p: self._min + (p - lowest) / (highest - lowest) * span for p in priorities}
