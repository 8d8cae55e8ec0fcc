"""`concurrency-detector`: pool saturation from the requests this router has in flight; also an endpoint filter.

Parameters (as GIE's `concurrency-detector`): `maxConcurrency` M (default 100; requests one endpoint should run
at once), `headroom` H (default 0.0; how far the filter lets an endpoint go above M) and `concurrencyMode`
(only `requests`; GIE's `tokens` and `hybrid` modes are not supported).

The detector keeps an `InFlightLedger` of its own: `pre_request` charges one request to the primary target
(`result.endpoints[0]`) and `on_response_complete` releases it, whatever the outcome. Nothing is scraped, so the
count is exact at every moment: a request counts from the moment it is scheduled until its response ends. With
flow control, that is what makes the dispatch deterministic: each released request is charged before the next is
considered, and a completion is released before the queue is woken, so the queue never releases more than fits
and refills a freed slot at once. A reload that keeps the plugin's parameters keeps the instance and its count; one
that changes them starts a new count at 0, while the requests already running complete on the old instance.

Saturation, read at admission and by the flow controller, over the candidate endpoints E (n of them):

    saturation = (sum over e in E of in_flight(e)) / (M * n)

and 1.0 when there are no candidates; the pool is saturated at >= 1.0. The load of the pool is aggregated, so
with M = 2 and two endpoints running 3 and 0 requests saturation is 0.75 (room for one more), although the
first endpoint is over M; the filter keeps the next request off it. Requests still running on endpoints that are
not candidates (left the pool, breaker open) do not count.

As a filter (listed in a scheduling profile) it drops every endpoint with `in_flight >= M * (1 + H)`; if that
would drop every endpoint it keeps them all instead, as `utilization-detector` does, so the filter never empties
a profile on its own (with flow control it cannot come to that: the queue releases a request only when the
aggregate is below M * n, so some endpoint is below M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    Filter,
    LLMRequest,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SaturationDetector,
    SchedulingResult,
)
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.scorers.in_flight import InFlightLedger


class ConcurrencyDetector(SaturationDetector, Filter, PreRequest, ResponseHook):
    type_name = "concurrency-detector"

    class Params(PluginParams):
        max_concurrency: int = Field(default=100, gt=0, description="Requests in flight one endpoint should run.")
        headroom: float = Field(
            default=0.0, ge=0.0, description="The filter keeps an endpoint below maxConcurrency x (1 + headroom)."
        )
        concurrency_mode: Literal["requests"] = Field(
            default="requests", description="What is counted in flight; only requests."
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._max = params.max_concurrency
        self._limit = params.max_concurrency * (1.0 + params.headroom)
        self._ledger = InFlightLedger(name)

    def in_flight(self, endpoint_id: str) -> int:
        """Requests scheduled to `endpoint_id` by this router and not complete yet."""
        return self._ledger.total(endpoint_id)

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        if not endpoints:
            return 1.0
        return sum(self._ledger.total(e.id) for e in endpoints) / (self._max * len(endpoints))

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        kept = [e for e in endpoints if self._ledger.total(e.id) < self._limit]
        return kept or list(endpoints)

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if result.endpoints:
            self._ledger.charge(state, result.endpoints[0].id, 1)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        self._ledger.release(state)
