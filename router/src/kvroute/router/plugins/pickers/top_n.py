"""`TopNPicker`: the base of the pickers that return a target and up to `maxNumOfEndpoints - 1` fallbacks.

Every picker takes `maxNumOfEndpoints` (default 1, at least 1) and an injected `random.Random` (the config builder
seeds one per picker from the run's seed, so a run is reproducible). A subclass says only how it chooses:
`choose(scored, n)` returns at most `n` distinct endpoints, the target first, the fallbacks in the order the
front door should try them. `top_by_score` is the choice `max-score-picker` makes, shared with the pickers that
fall back to it.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence
from operator import attrgetter

from pydantic import Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Picker, ScoredEndpoint
from kvroute.router.plugins.params import PluginParams


class TopNParams(PluginParams):
    max_num_of_endpoints: int = Field(default=1, ge=1, description="The target plus the fallbacks, at most.")


# The sort key, called from C: no Python frame per endpoint.
_score = attrgetter("score")


def top_by_score(scored: Sequence[ScoredEndpoint], n: int, rng: random.Random) -> list[Endpoint]:
    """The `n` highest-scoring endpoints, highest first, ties in random order."""
    shuffled = list(scored)
    rng.shuffle(shuffled)
    shuffled.sort(key=_score, reverse=True)
    return [s.endpoint for s in shuffled[:n]]


class TopNPicker(Picker):
    Params = TopNParams

    def __init__(self, name: str, params: TopNParams | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self.n = params.max_num_of_endpoints
        self.rng = rng or random.Random()

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        return self.choose(scored, self.n)

    @abstractmethod
    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        """At most `n` distinct endpoints of `scored`, the target first."""
