"""`softmax-picker`: endpoints drawn at random, favouring high scores by a tunable temperature.

The summed scores are first range-normalised, `x_e = (s_e - min s) / (max s - min s)` (all equal -> every
`x_e = 1`), so the temperature means the same whatever the profile's weights add up to. With `temperature` T > 0
the target is drawn with probability

    P(e) = exp(x_e / T) / sum_f exp(x_f / T)

and each fallback (up to `maxNumOfEndpoints`, default 1, in total) is drawn the same way from the endpoints not
yet chosen. E.g. T = 1 and scores [2, 1, 0] give x = [1, 0.5, 0] and P = [0.506, 0.307, 0.186]. A small T
approaches argmax, a large T approaches uniform. T = 0 (the default) is argmax: the highest score wins, ties
broken at random, exactly as `max-score-picker`. All draws come from the injected `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from pydantic import Field

from kvroute.router.framework import Endpoint, ScoredEndpoint
from kvroute.router.plugins.pickers.top_n import TopNParams, TopNPicker, top_by_score
from kvroute.router.plugins.scorers.normalize import normalize_min_max


class SoftmaxPicker(TopNPicker):
    type_name = "softmax-picker"

    class Params(TopNParams):
        temperature: float = Field(default=0.0, ge=0.0, description="0 picks the highest score.")

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params, rng=rng)
        self._temperature = params.temperature

    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        if self._temperature == 0:
            return top_by_score(scored, n, self.rng)
        normalised = normalize_min_max({s.endpoint.id: s.score for s in scored}, lower_is_better=False)
        candidates = [(s.endpoint, normalised[s.endpoint.id]) for s in scored]
        picked: list[Endpoint] = []
        while candidates and len(picked) < n:
            # Shifted by the best remaining x so every weight is in (0, 1] and the best never underflows to 0.
            best = max(x for _, x in candidates)
            index = self._draw([math.exp((x - best) / self._temperature) for _, x in candidates])
            picked.append(candidates.pop(index)[0])
        return picked

    def _draw(self, weights: Sequence[float]) -> int:
        threshold = self.rng.random() * sum(weights)
        cumulative = 0.0
        for index, weight in enumerate(weights):
            cumulative += weight
            if threshold < cumulative:
                return index
        # Rounding can leave the threshold at the very top of the range.
        return len(weights) - 1
