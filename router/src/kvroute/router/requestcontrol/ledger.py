"""`Ledger`: what the requests of one router report to, apart from their plugins.

A `RequestHandle` reports here, never to the Director: the request totals and durations by API and status, the
in-flight gauge of the endpoint serving each request, the prefix hit ratio of each answer, the fleet peers
(`kvroute.router.fleet.sync`, when router replicas share their state) and the endpoints found unreachable.

Passive health: an endpoint reported unreachable is left out of `reachable` until it is scraped successfully again
or `unreachable_cooldown` seconds pass (then real traffic probes it), unless that would leave none.
"""

from __future__ import annotations

import time

from prometheus_client import Gauge

from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.observability import RouterMetrics


class Ledger:
    __slots__ = ("_cooldown", "_unreachable", "fleet", "metrics")

    def __init__(
        self,
        metrics: RouterMetrics | None = None,
        fleet: FleetSync | None = None,
        *,
        unreachable_cooldown: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.fleet = fleet  # peers told of every request scheduled here (router replicas sharing state)
        self._cooldown = unreachable_cooldown
        self._unreachable: dict[str, float] = {}  # endpoint id -> when it failed (time.monotonic)

    def record(self, api: ApiKind, status: int, seconds: float) -> None:
        """One request ended with `status` (499: its client went away) after `seconds`."""
        if self.metrics is not None:
            self.metrics.record_request(api.value, status, seconds)

    def observe_prefix_hit(self, prompt_tokens: int | None, cached_tokens: int | None) -> None:
        """The usage of one answer: the share of its prompt the model server had cached."""
        if self.metrics is not None and prompt_tokens and cached_tokens is not None:
            self.metrics.observe_prefix_hit_ratio(min(1.0, cached_tokens / prompt_tokens))

    def in_flight_gauge(self, endpoint: Endpoint) -> Gauge | None:
        return self.metrics.in_flight_gauge(endpoint.id) if self.metrics is not None else None

    def mark_unreachable(self, endpoint: Endpoint) -> None:
        self._unreachable[endpoint.id] = time.monotonic()

    def reachable(self, pool: EndpointPool, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """`endpoints` without those marked unreachable (and still in their cooldown), unless none would be left."""
        unreachable = self._unreachable
        if not unreachable:
            return endpoints
        now = time.monotonic()
        for endpoint_id, failed_at in list(unreachable.items()):
            endpoint = pool.get(endpoint_id)
            if endpoint is None or now - failed_at >= self._cooldown or endpoint.metrics.scraped_at > failed_at:
                del unreachable[endpoint_id]
        reachable = tuple(e for e in endpoints if e.id not in unreachable)
        return reachable or endpoints
