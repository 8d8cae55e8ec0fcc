"""`running-requests-size-scorer`: prefer endpoints running fewer requests.

Reads `running` (requests in the model server's running batch, from the last scrape) and normalises it across
the filtered endpoints, lower is better:

    score_e = (max_r - running_e) / (max_r - min_r)        all equal -> 1.0

e.g. running [2, 4, 6] scores [1.0, 0.5, 0.0]. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.plugins.scorers.normalize import normalize_min_max


class RunningRequestsSizeScorer(Scorer):
    type_name = "running-requests-size-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return normalize_min_max({e.id: e.metrics.running for e in endpoints}, lower_is_better=True)
