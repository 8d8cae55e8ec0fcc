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

from collections.abc import Sequence

from kvroute.router.framework import Endpoint, ScoredEndpoint
from kvroute.router.plugins.pickers.top_n import TopNPicker


class WeightedRandomPicker(TopNPicker):
    type_name = "weighted-random-picker"

    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        keyed: list[tuple[bool, float, Endpoint]] = []
        for s in scored:
            u = self.rng.random()
            positive = s.score > 0
            # Zero scores sort after every positive one; their own key only orders them among themselves.
            keyed.append((positive, u ** (1.0 / s.score) if positive else u, s.endpoint))
        keyed.sort(key=lambda k: (k[0], k[1]), reverse=True)
        return [endpoint for _, _, endpoint in keyed[:n]]
