"""`active-request-scorer`: prefer endpoints with fewer requests in flight through this router.

The count is the router's own, so it reacts at once instead of waiting for the next metrics scrape: `pre_request`
adds one to the primary target of the scheduling result (`result.endpoints[0]`), and `on_response_complete`
takes that one away again, exactly once per request whatever the outcome. Counts of other router replicas are
not seen.

With in-flight count `c_e`, `lo`/`hi` the smallest/largest count among the scored endpoints, `I` =
`idleThreshold` (default 0) and `M` = `maxBusyScore` (default 1.0):

    score_e = 1.0                               if c_e <= I            (idle)
    score_e = M * (hi - c_e) / (hi - lo)        otherwise              (busy; hi == lo -> M)

With the defaults this is plain min-max normalisation, lower better: counts [0, 2, 4] score [1.0, 0.5, 0.0].
Raising `I` treats lightly loaded endpoints as equally good; `M` caps what a busy endpoint can score, so when
no endpoint is idle the least busy one scores M rather than 1. E.g. I = 1, M = 0.5 turns counts [1, 3, 5] into
[1.0, 0.25, 0.0], and [2, 3] into [0.5, 0.0].
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.scorers.in_flight import InFlightScorer
from kvroute.router.plugins.scorers.normalize import normalize_min_max


class ActiveRequestScorer(InFlightScorer):
    type_name = "active-request-scorer"

    class Params(PluginParams):
        idle_threshold: int = Field(
            default=0, ge=0, description="In-flight count at or below which an endpoint scores 1."
        )
        max_busy_score: float = Field(
            default=1.0, ge=0.0, le=1.0, description="Upper bound of a busy endpoint's score."
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._idle_threshold = params.idle_threshold
        self._max_busy_score = params.max_busy_score

    def in_flight(self, endpoint_id: str) -> int:
        """Requests this router has sent to the endpoint that have not completed yet."""
        return self._ledger.total(endpoint_id)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        counts = {e.id: self.in_flight(e.id) for e in endpoints}
        relative = normalize_min_max(counts, lower_is_better=True)
        return {
            eid: 1.0 if count <= self._idle_threshold else self._max_busy_score * relative[eid]
            for eid, count in counts.items()
        }

    def amount(self, state: CycleState, request: LLMRequest, endpoint_id: str) -> int:
        return 1
