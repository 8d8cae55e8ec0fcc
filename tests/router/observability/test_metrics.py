from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kvroute.router.observability import FleetStats, RouterMetrics


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
        "kvroute_endpoint_metrics_age_seconds",
        "kvroute_request_duration_seconds",
        "kvroute_config_reloads",
        "kvroute_request_preparation_failures",
        "kvroute_kv_events",
        "kvroute_kv_events_sequence_gaps",
        "kvroute_kv_events_publisher_restarts",
        "kvroute_kv_events_malformed_messages",
        "kvroute_kv_events_unknown_endpoint_messages",
        "kvroute_kv_events_unindexed_blocks",
        "kvroute_kv_index_entries",
        "kvroute_upstream_retries",
        "kvroute_endpoint_breaker_state",
        "kvroute_endpoint_ejections",
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


def test_fleet_sync_metrics_appear_once_registered_and_read_their_source_at_each_scrape() -> None:
    metrics = RouterMetrics()
    assert not any(name.startswith("kvroute_fleet_") for name in families(metrics))
    stats = FleetStats()
    metrics.register_fleet(lambda: stats)
    stats = FleetStats(batches_sent=3, bytes_sent=1500, records_applied=7, peers=2, peer_requests_open=4)

    fleet = {name: samples for name, samples in families(metrics).items() if name.startswith("kvroute_fleet_")}

    assert fleet["kvroute_fleet_batches_sent"] == [("kvroute_fleet_batches_sent_total", {}, 3.0)]
    assert fleet["kvroute_fleet_sent_bytes"] == [("kvroute_fleet_sent_bytes_total", {}, 1500.0)]
    assert fleet["kvroute_fleet_records_applied"] == [("kvroute_fleet_records_applied_total", {}, 7.0)]
    assert fleet["kvroute_fleet_peers"] == [("kvroute_fleet_peers", {}, 2.0)]
    assert fleet["kvroute_fleet_peer_requests_open"] == [("kvroute_fleet_peer_requests_open", {}, 4.0)]
    assert set(fleet) == {
        "kvroute_fleet_batches_sent",
        "kvroute_fleet_sent_bytes",
        "kvroute_fleet_batches_received",
        "kvroute_fleet_batches_malformed",
        "kvroute_fleet_records_applied",
        "kvroute_fleet_records_rejected",
        "kvroute_fleet_sequence_gaps",
        "kvroute_fleet_peers_expired",
        "kvroute_fleet_peer_requests_stale",
        "kvroute_fleet_peers",
        "kvroute_fleet_peer_addresses",
        "kvroute_fleet_peer_requests_open",
    }
