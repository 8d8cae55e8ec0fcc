from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kvroute.router.observability import RouterMetrics


def families(metrics: RouterMetrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(metrics.render().decode())
    }


def test_render_exposes_every_metric_by_name() -> None:
    names = {name for name in families(RouterMetrics()) if not name.endswith("_created")}

    assert names == {
        "kvroute_scheduler_duration_seconds",
        "kvroute_scheduler_plugin_duration_seconds",
        "kvroute_scheduler_decisions",
        "kvroute_scheduler_errors",
        "kvroute_requests",
        "kvroute_requests_in_flight",
        "kvroute_prefix_hit_ratio",
        "kvroute_request_duration_seconds",
        "kvroute_config_reloads",
    }


def test_scheduler_histogram_buckets_span_50_microseconds_to_100_milliseconds() -> None:
    metrics = RouterMetrics()
    metrics.observe_scheduling(0.00007)

    (family,) = [f for f in metrics.registry.collect() if f.name == "kvroute_scheduler_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}

    assert list(buckets) == [
        "5e-05",
        "0.0001",
        "0.0002",
        "0.0005",
        "0.001",
        "0.002",
        "0.005",
        "0.01",
        "0.02",
        "0.05",
        "0.1",
        "+Inf",
    ]
    assert buckets["5e-05"] == 0
    assert buckets["0.0001"] == 1


def test_two_instances_in_one_process_count_separately() -> None:
    first, second = RouterMetrics(), RouterMetrics()

    first.record_config_reload(success=True)
    first.record_config_reload(success=False)
    first.record_config_reload(success=False)

    assert first.registry.get_sample_value("kvroute_config_reloads_total", {"result": "failure"}) == 2
    assert first.registry.get_sample_value("kvroute_config_reloads_total", {"result": "success"}) == 1
    assert second.registry.get_sample_value("kvroute_config_reloads_total", {"result": "failure"}) is None


def test_labelled_children_are_reused() -> None:
    metrics = RouterMetrics()

    assert metrics.in_flight_gauge("10.0.0.1:8000") is metrics.in_flight_gauge("10.0.0.1:8000")
    observe = metrics.plugin_observer("Scorer.score", "queue-scorer", "q")
    assert observe == metrics.plugin_observer("Scorer.score", "queue-scorer", "q")


def test_requests_and_durations_are_counted_per_api_and_code() -> None:
    metrics = RouterMetrics()

    metrics.record_request("chat", 200, 0.3)
    metrics.record_request("chat", 200, 1.5)
    metrics.record_request("completions", 503, 0.001)
    metrics.observe_prefix_hit_ratio(0.75)

    value = metrics.registry.get_sample_value
    assert value("kvroute_requests_total", {"api": "chat", "code": "200"}) == 2
    assert value("kvroute_requests_total", {"api": "completions", "code": "503"}) == 1
    assert value("kvroute_request_duration_seconds_sum", {"api": "chat"}) == 1.8
    assert value("kvroute_request_duration_seconds_bucket", {"api": "chat", "le": "0.5"}) == 1
    assert value("kvroute_prefix_hit_ratio_bucket", {"le": "0.7"}) == 0
    assert value("kvroute_prefix_hit_ratio_bucket", {"le": "0.8"}) == 1


def test_forgetting_an_endpoint_drops_its_series_only() -> None:
    metrics = RouterMetrics()
    metrics.in_flight_gauge("10.0.0.1:8000").inc()
    metrics.in_flight_gauge("10.0.0.2:8000").inc(2)
    metrics.record_decision("default", "10.0.0.1:8000")
    metrics.record_decision("decode", "10.0.0.1:8000")
    metrics.record_decision("default", "10.0.0.2:8000")

    metrics.forget_endpoint("10.0.0.1:8000")

    samples = families(metrics)
    assert samples["kvroute_requests_in_flight"] == [("kvroute_requests_in_flight", {"endpoint": "10.0.0.2:8000"}, 2.0)]
    decisions = [s for s in samples["kvroute_scheduler_decisions"] if s[0] == "kvroute_scheduler_decisions_total"]
    assert decisions == [
        ("kvroute_scheduler_decisions_total", {"endpoint": "10.0.0.2:8000", "profile": "default"}, 1.0)
    ]
    # A forgotten endpoint that comes back starts from zero.
    metrics.in_flight_gauge("10.0.0.1:8000").inc()
    assert metrics.registry.get_sample_value("kvroute_requests_in_flight", {"endpoint": "10.0.0.1:8000"}) == 1
