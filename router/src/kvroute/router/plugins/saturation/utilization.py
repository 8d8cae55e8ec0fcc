"""`utilization-detector`: pool saturation from scraped queue depth and KV-cache use; also a load-shedding filter.

Parameters: `queueDepthThreshold` Q (default 5 requests), `kvCacheUtilThreshold` KV (default 0.8, in (0, 1]),
`metricsStalenessThreshold` S (default "200ms"; a Go duration string such as "200ms", "1.5s", "1m30s", or a
number of seconds) and `headroom` H (default 0.0).

An endpoint's metrics are stale when the data layer marked them so, or when they were scraped more than S ago
(`scraped_at` against `time.monotonic()`, the data layer's clock). S is also the detector's `max_metrics_age`: the
data layer keeps idle endpoints' metrics younger than S.

Saturation, read at admission:

    saturation = mean over endpoints of  1.0                              if stale
                                         max(waiting / Q, kv_usage / KV)  otherwise

and 1.0 when there are no endpoints; the pool is saturated at >= 1.0. A single endpoint's term is not capped,
so one badly backed-up endpoint can saturate a pool whose others are idle: with Q = 5, KV = 0.8 and endpoints
(waiting 0, kv 0.2), (waiting 10, kv 0.4) the terms are 0.25 and 2.0 and saturation is 1.125.

As a filter it drops every endpoint that is stale, or has `waiting >= Q * (1 + H)`, or `kv_usage >= KV * (1 + H)`;
if that would drop every endpoint it keeps them all instead, so the filter sheds load from overloaded endpoints
but never empties a profile on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import BeforeValidator, Field

from kvroute.router.config.models import parse_duration
from kvroute.router.framework import CycleState, Endpoint, EndpointMetrics, Filter, LLMRequest, SaturationDetector
from kvroute.router.plugins.params import PluginParams


def _seconds(value: object) -> object:
    """A number is taken as seconds; anything else must be a Go duration string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return parse_duration(value)


class UtilizationDetector(SaturationDetector, Filter):
    type_name = "utilization-detector"

    class Params(PluginParams):
        queue_depth_threshold: int = Field(default=5, gt=0)
        kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
        metrics_staleness_threshold: Annotated[float, BeforeValidator(_seconds)] = Field(
            default=0.2, gt=0.0, description="Seconds (or a Go duration string)."
        )
        headroom: float = Field(default=0.0, ge=0.0)

    def __init__(self, name: str, params: Params | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._queue = params.queue_depth_threshold
        self._kv = params.kv_cache_util_threshold
        self._staleness = params.metrics_staleness_threshold
        self.max_metrics_age = self._staleness
        self._headroom = params.headroom
        self._clock = clock

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        if not endpoints:
            return 1.0
        now = self._clock()
        return sum(self._utilization(e.metrics, now) for e in endpoints) / len(endpoints)

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        now = self._clock()
        queue_limit = self._queue * (1.0 + self._headroom)
        kv_limit = self._kv * (1.0 + self._headroom)
        kept = [
            e
            for e in endpoints
            if not self._is_stale(e.metrics, now) and e.metrics.waiting < queue_limit and e.metrics.kv_usage < kv_limit
        ]
        return kept or list(endpoints)

    def _utilization(self, metrics: EndpointMetrics, now: float) -> float:
        if self._is_stale(metrics, now):
            return 1.0
        return max(metrics.waiting / self._queue, metrics.kv_usage / self._kv)

    def _is_stale(self, metrics: EndpointMetrics, now: float) -> bool:
        return metrics.stale or now - metrics.scraped_at > self._staleness
