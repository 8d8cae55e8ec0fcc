"""`random-picker`: uniformly random endpoints, ignoring scores (a baseline).

Draws `maxNumOfEndpoints` (default 1) distinct endpoints uniformly at random with the injected `random.Random`;
the first is the target, the rest are fallbacks.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import Endpoint, ScoredEndpoint
from kvroute.router.plugins.pickers.top_n import TopNPicker


class RandomPicker(TopNPicker):
    type_name = "random-picker"

    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        chosen = self.rng.sample(list(scored), min(n, len(scored)))
        return [s.endpoint for s in chosen]
