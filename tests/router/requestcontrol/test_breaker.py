"""The endpoints' circuit breakers: closed, open, half-open with one probe at a time, and every transition's count."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import Endpoint
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, BreakerSettings
from kvroute.router.requestcontrol.ledger import Ledger


@pytest.fixture
def pool() -> EndpointPool:
    return EndpointPool([Endpoint.create("127.0.0.2", 8000), Endpoint.create("127.0.0.3", 8000)])


def ids(endpoints: tuple[Endpoint, ...]) -> list[str]:
    return [e.id for e in endpoints]


def test_consecutive_failures_open_the_breaker_and_a_success_between_them_resets_the_count(pool: EndpointPool) -> None:
    breakers = Breakers(BreakerSettings(failure_threshold=3, open_duration=60.0))
    a, b = pool.snapshot()
    for _ in range(2):
        breakers.failure(a.id, "status_500")
    breakers.success(a.id)
    for _ in range(2):
        breakers.failure(a.id, "status_500")
    assert breakers.state(a.id) == CLOSED
    assert ids(breakers.admit(pool, pool.snapshot())) == [a.id, b.id]

    breakers.failure(a.id, "status_500")

    assert breakers.state(a.id) == OPEN
    assert ids(breakers.admit(pool, pool.snapshot())) == [b.id]


def test_after_the_open_duration_one_probe_goes_and_success_threshold_successes_close(pool: EndpointPool) -> None:
    breakers = Breakers(BreakerSettings(failure_threshold=1, success_threshold=2, open_duration=0.05))
    a, b = pool.snapshot()
    breakers.failure(a.id, "first_byte_timeout")
    assert ids(breakers.admit(pool, pool.snapshot())) == [b.id]
    time.sleep(0.06)

    assert ids(breakers.admit(pool, pool.snapshot())) == [a.id, b.id]
    assert breakers.state(a.id) == HALF_OPEN
    breakers.forwarded(a.id)  # the probe
    assert ids(breakers.admit(pool, pool.snapshot())) == [b.id]  # one probe at a time
    breakers.success(a.id)
    assert breakers.state(a.id) == HALF_OPEN
    breakers.forwarded(a.id)
    breakers.success(a.id)

    assert breakers.state(a.id) == CLOSED
    assert ids(breakers.admit(pool, pool.snapshot())) == [a.id, b.id]


def test_a_failed_probe_opens_the_breaker_again(pool: EndpointPool) -> None:
    breakers = Breakers(BreakerSettings(failure_threshold=1, open_duration=0.05))
    a, b = pool.snapshot()
    breakers.failure(a.id, "status_503")
    time.sleep(0.06)
    assert breakers.state(a.id) == HALF_OPEN
    breakers.forwarded(a.id)

    breakers.failure(a.id, "status_503")

    assert breakers.state(a.id) == OPEN
    assert ids(breakers.admit(pool, pool.snapshot())) == [b.id]


def test_when_every_breaker_is_open_every_endpoint_stays_a_candidate(pool: EndpointPool) -> None:
    breakers = Breakers(BreakerSettings(failure_threshold=1, open_duration=60.0))
    for endpoint in pool.snapshot():
        breakers.failure(endpoint.id, "status_500")

    assert len(breakers.admit(pool, pool.snapshot())) == 2


def test_a_fresh_scrape_closes_a_breaker_opened_by_a_connection_failure_only(pool: EndpointPool) -> None:
    breakers = Breakers(BreakerSettings(failure_threshold=1, open_duration=60.0))
    a, b = pool.snapshot()
    breakers.unreachable(a.id)
    breakers.failure(b.id, "status_500")

    for endpoint in (a, b):
        endpoint.metrics = replace(endpoint.metrics, scraped_at=time.monotonic() + 1)

    assert breakers.state(a.id) == OPEN
    assert ids(breakers.admit(pool, (a, b))) == [a.id]  # b answered 500s: its scrapes prove nothing
    assert breakers.state(a.id) == CLOSED


def test_the_ledger_counts_5xx_and_429_as_failures_and_exports_state_and_ejections(pool: EndpointPool) -> None:
    metrics = RouterMetrics()
    ledger = Ledger(metrics, breaker=BreakerSettings(failure_threshold=2, open_duration=60.0))
    a, b = pool.snapshot()
    ledger.answered(a, 404)  # the client's mistake, not the endpoint's
    ledger.answered(a, 429)
    ledger.answered(a, 503)
    ledger.answered(b, 500)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert ids(ledger.reachable(pool, pool.snapshot())) == [b.id]
    assert sample("kvroute_endpoint_breaker_state", endpoint=a.id) == OPEN
    assert sample("kvroute_endpoint_ejections_total", endpoint=a.id, reason="status_503") == 1
    assert sample("kvroute_endpoint_breaker_state", endpoint=b.id) is None
    metrics.forget_endpoint(a.id)
    assert sample("kvroute_endpoint_breaker_state", endpoint=a.id) is None
