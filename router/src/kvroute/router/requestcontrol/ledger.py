"""`Ledger`: what the requests of one router report to, apart from their plugins.

A `RequestHandle` reports here, never to the Director: the request totals and durations by API and status, the
in-flight gauge of the endpoint serving each request, the prefix hit ratio of each answer, the fleet peers
(`kvroute.router.fleet.sync`, when router replicas share their state) and the endpoints found unreachable.

Passive health: the ledger keeps a circuit breaker per endpoint (`breaker`). An endpoint reported unreachable
opens its breaker at once, a run of failed answers (5xx, 429, no first byte in time) after `failure_threshold` of
them; `reachable` leaves out the endpoints whose breaker is open (or half-open with its probe in flight) unless
that would leave none. An endpoint found unreachable is back as soon as it is scraped successfully again.

Scheduling: `scheduled` records the age of the metrics the target was picked on
(`kvroute_endpoint_metrics_age_seconds`) and tells the data layer (`routed`, the scraper's `scrape_soon`), which
scrapes an endpoint polled slowly at once and keeps it on the fast cadence while requests go there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Gauge

from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.breaker import Breakers, BreakerSettings

FAILED_STATUS = 500  # this status and above, and 429, count as failures of the endpoint that answered
TOO_MANY_REQUESTS = 429


class Ledger:
    __slots__ = ("breakers", "fleet", "metrics", "routed")

    def __init__(
        self,
        metrics: RouterMetrics | None = None,
        fleet: FleetSync | None = None,
        *,
        breaker: BreakerSettings | None = None,
        routed: Callable[[str], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.fleet = fleet  # peers told of every request scheduled here (router replicas sharing state)
        self.breakers = Breakers(breaker, metrics.record_breaker_state if metrics is not None else None)
        self.routed = routed  # told the id of every endpoint a request is scheduled to

    def scheduled(self, endpoint: Endpoint) -> None:
        """A request was scheduled to `endpoint` (its target): the age of the metrics it was picked on, and the
        data layer's hint."""
        scraped_at = endpoint.metrics.scraped_at
        if self.metrics is not None and scraped_at > 0:  # never scraped: no age to speak of
            self.metrics.observe_metrics_age(time.monotonic() - scraped_at)
        if self.routed is not None:
            self.routed(endpoint.id)

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
        self.breakers.unreachable(endpoint.id)

    def forwarded(self, endpoint: Endpoint) -> None:
        self.breakers.forwarded(endpoint.id)

    def attempt_failed(self, endpoint: Endpoint, reason: str) -> None:
        """An attempt on `endpoint` failed after connecting (`reason`: a status, a timeout): one failure more."""
        self.breakers.failure(endpoint.id, reason)

    def answered(self, endpoint: Endpoint, status: int) -> None:
        """`endpoint` answered with `status`: a success of its breaker, or a failure (5xx, 429)."""
        if status >= FAILED_STATUS or status == TOO_MANY_REQUESTS:
            self.breakers.failure(endpoint.id, f"status_{status}")
        else:
            self.breakers.success(endpoint.id)

    def record_retry(self, reason: str) -> None:
        """A request is sent again, to a fallback, after an attempt that failed for `reason`."""
        if self.metrics is not None:
            self.metrics.record_retry(reason)

    def reachable(self, pool: EndpointPool, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """`endpoints` without those their breaker keeps out, unless none would be left."""
        return self.breakers.admit(pool, endpoints)
