"""`random-picker`: uniformly random endpoints, ignoring scores (a baseline).

Draws `maxNumOfEndpoints` (default 1) distinct endpoints uniformly at random with the injected `random.Random`;
the first is the target, the rest are fallbacks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Picker, ScoredEndpoint


class RandomPicker(Picker):
    type_name = "random-picker"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        max_num_of_endpoints: int = Field(default=1, ge=1, alias="maxNumOfEndpoints")

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._n = params.max_num_of_endpoints
        self._rng = rng or random.Random()

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        chosen = self._rng.sample(list(scored), min(self._n, len(scored)))
        return [s.endpoint for s in chosen]
