"""The ledger requests report to: request metrics, in-flight gauges, prefix hit ratio, unreachable endpoints."""

from __future__ import annotations

import time

from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import ApiKind, Endpoint, EndpointMetrics
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.ledger import Ledger


def sample(metrics: RouterMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_request_is_recorded_by_api_and_status() -> None:
    metrics = RouterMetrics()
    ledger = Ledger(metrics)

    ledger.record(ApiKind.CHAT, 499, 0.25)

    assert sample(metrics, "kvroute_requests_total", api="chat", code="499") == 1


def test_the_prefix_hit_ratio_is_cached_over_prompt_tokens_and_needs_both() -> None:
    metrics = RouterMetrics()
    ledger = Ledger(metrics)

    ledger.observe_prefix_hit(200, 150)
    ledger.observe_prefix_hit(0, 10)
    ledger.observe_prefix_hit(100, None)

    assert sample(metrics, "kvroute_prefix_hit_ratio_count") == 1
    assert sample(metrics, "kvroute_prefix_hit_ratio_sum") == 0.75


def test_without_metrics_nothing_is_recorded_and_there_is_no_gauge() -> None:
    ledger = Ledger()

    ledger.record(ApiKind.COMPLETIONS, 200, 0.1)
    ledger.observe_prefix_hit(10, 5)

    assert ledger.in_flight_gauge(Endpoint.create("127.0.0.2", 8000)) is None


def test_an_unreachable_endpoint_is_left_out_until_scraped_again_unless_none_would_remain() -> None:
    a, b = Endpoint.create("127.0.0.2", 8000), Endpoint.create("127.0.0.3", 8000)
    pool = EndpointPool([a, b])
    ledger = Ledger(breaker=BreakerSettings(open_duration=60.0))
    both = pool.snapshot()

    ledger.mark_unreachable(a)
    assert [e.id for e in ledger.reachable(pool, both)] == [b.id]
    assert [e.id for e in ledger.reachable(pool, (a,))] == [a.id]  # none would remain

    a.metrics = EndpointMetrics(scraped_at=time.monotonic(), stale=False)
    assert [e.id for e in ledger.reachable(pool, both)] == [a.id, b.id]
