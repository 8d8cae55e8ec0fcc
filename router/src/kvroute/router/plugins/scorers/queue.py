"""`queue-scorer`: prefer endpoints with shorter waiting queues.

Reads `waiting` (requests queued in the model server, from the last scrape) and normalises it across the
filtered endpoints, lower is better:

    score_e = (max_w - waiting_e) / (max_w - min_w)        all equal -> 1.0

e.g. waiting [0, 5, 10] scores [1.0, 0.5, 0.0]. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.plugins.scorers.normalize import normalize_min_max


class QueueScorer(Scorer):
    type_name = "queue-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return normalize_min_max({e.id: e.metrics.waiting for e in endpoints}, lower_is_better=True)
