"""`max-score-picker`: the endpoints with the highest summed score.

The scored endpoints are shuffled with the injected `random.Random`, then stably sorted by score, highest first;
the first `maxNumOfEndpoints` (default 1) are returned, the target first and the rest as fallbacks. The shuffle
makes ties break at random, so endpoints with equal scores share the load instead of the first one in pool order
taking it all.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import Endpoint, ScoredEndpoint
from kvroute.router.plugins.pickers.top_n import TopNPicker, top_by_score


class MaxScorePicker(TopNPicker):
    type_name = "max-score-picker"

    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        return top_by_score(scored, n, self.rng)
