"""`max-score-picker`: the endpoints with the highest summed score.

The scored endpoints are shuffled with the injected `random.Random`, then stably sorted by score, highest first;
the first `maxNumOfEndpoints` (default 1) are returned, the target first and the rest as fallbacks. The shuffle
makes ties break at random, so endpoints with equal scores share the load instead of the first one in pool order
taking it all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Picker, ScoredEndpoint


def top_by_score(scored: Sequence[ScoredEndpoint], n: int, rng: random.Random) -> list[Endpoint]:
    """The `n` highest-scoring endpoints, highest first, ties in random order."""
    shuffled = list(scored)
    rng.shuffle(shuffled)
    shuffled.sort(key=lambda s: s.score, reverse=True)
    return [s.endpoint for s in shuffled[:n]]


class MaxScorePicker(Picker):
    type_name = "max-score-picker"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        max_num_of_endpoints: int = Field(default=1, ge=1, alias="maxNumOfEndpoints")

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._n = params.max_num_of_endpoints
        self._rng = rng or random.Random()

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        return top_by_score(scored, self._n, self._rng)
