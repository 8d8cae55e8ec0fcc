"""Merging the metrics pages of a pod's workers into one."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kvroute.router.observability import RouterMetrics
from kvroute.router.observability.merge import merge_pages


def samples(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_shared_gauges_take_the_largest() -> None:
    first, second = RouterMetrics(), RouterMetrics()
    first.record_request("chat", 200, 0.1)
    second.record_request("chat", 200, 0.3)
    second.record_request("completions", 503, 0.01)
    first.in_flight_gauge("127.0.0.2:8000").set(2)
    second.in_flight_gauge("127.0.0.2:8000").set(3)
    first.set_kv_index_entries("precise", 100)
    second.set_kv_index_entries("precise", 120)
    first.record_breaker_state("127.0.0.2:8000", 0, None)
    second.record_breaker_state("127.0.0.2:8000", 1, "5xx")

    merged = samples(merge_pages([first.render(), second.render()]))

    assert merged[("kvroute_requests_total", (("api", "chat"), ("code", "200")))] == 2
    assert merged[("kvroute_requests_total", (("api", "completions"), ("code", "503")))] == 1
    assert merged[("kvroute_request_duration_seconds_count", (("api", "chat"),))] == 2
    assert merged[("kvroute_request_duration_seconds_sum", (("api", "chat"),))] == 0.4
    assert merged[("kvroute_requests_in_flight", (("endpoint", "127.0.0.2:8000"),))] == 5  # each worker's own
    assert merged[("kvroute_kv_index_entries", (("plugin_name", "precise"),))] == 120  # one shared view
    assert merged[("kvroute_endpoint_breaker_state", (("endpoint", "127.0.0.2:8000"),))] == 1
    assert merged[("kvroute_router_workers", ())] == 2


def test_one_page_merges_to_itself_plus_the_workers_gauge() -> None:
    metrics = RouterMetrics()
    metrics.record_request("chat", 200, 0.2)

    merged = samples(merge_pages([metrics.render()]))

    assert {k: v for k, v in merged.items() if k[0] != "kvroute_router_workers"} == samples(metrics.render())
    assert merged[("kvroute_router_workers", ())] == 1
