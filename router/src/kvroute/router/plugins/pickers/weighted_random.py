"""`weighted-random-picker`: endpoints drawn at random in proportion to their summed score.

Weighted sampling without replacement by the A-Res method: each endpoint with score `s > 0` draws
`U ~ Uniform[0, 1)` from the injected `random.Random` and gets the key

    key = U ** (1 / s)

and the `maxNumOfEndpoints` (default 1) endpoints with the largest keys are returned, largest first. For the
target this means `P(e) = s_e / sum(s)`; e.g. scores [3, 1] pick the first 75% of the time. Endpoints scoring 0
(or less) never outrank a positive one: they come last, in random order, and are picked only when fewer positive
endpoints than requested exist.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Picker, ScoredEndpoint


class WeightedRandomPicker(Picker):
    type_name = "weighted-random-picker"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        max_num_of_endpoints: int = Field(default=1, ge=1, alias="maxNumOfEndpoints")

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._n = params.max_num_of_endpoints
        self._rng = rng or random.Random()

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        keyed: list[tuple[bool, float, Endpoint]] = []
        for s in scored:
            u = self._rng.random()
            positive = s.score > 0
            # Zero scores sort after every positive one; their own key only orders them among themselves.
            keyed.append((positive, u ** (1.0 / s.score) if positive else u, s.endpoint))
        keyed.sort(key=lambda k: (k[0], k[1]), reverse=True)
        return [endpoint for _, _, endpoint in keyed[: self._n]]
