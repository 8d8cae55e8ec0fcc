"""`load-aware-scorer`: an absolute, bounded penalty on the waiting queue.

With `threshold` T (default 128 requests) and `waiting` from the last scrape:

    score_e = 0.5 * (1 - min(waiting_e, T) / T)

so an empty queue scores 0.5, and a queue of T or more scores 0; e.g. with T = 128, waiting [0, 32, 128, 500]
scores [0.5, 0.375, 0.0, 0.0]. Unlike `queue-scorer` the value does not depend on the other endpoints, and it
never exceeds 0.5, so this scorer alone never outweighs an affinity scorer of the same weight.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.plugins.params import PluginParams


class LoadAwareScorer(Scorer):
    type_name = "load-aware-scorer"

    class Params(PluginParams):
        threshold: int = Field(default=128, gt=0, description="Queue length at and above which the score is 0.")

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._threshold = params.threshold

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        t = self._threshold
        return {e.id: 0.5 * (1.0 - min(e.metrics.waiting, t) / t) for e in endpoints}
