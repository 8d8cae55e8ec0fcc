"""The router's Prometheus metrics, all defined here so every name and label set has one place.

Each `RouterMetrics` owns its own `CollectorRegistry`, so several routers (tests, the demo) can live in one
process. Labelled children are cached per label tuple: `Metric.labels()` validates and locks on every call,
which the scheduler's hot path should not pay for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# From 50 µs (a cache-only pick on a small pool) to 100 ms (something is badly wrong).
SCHEDULER_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# One plugin call is usually a few microseconds.
PLUGIN_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(Generic[M]):
    """Labelled children of one metric, looked up once per label tuple."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def get(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child

    def remove_where(self, index: int, value: str) -> None:
        """Drops every child whose label at `index` is `value` (e.g. an endpoint that left the pool)."""
        for labels in [labels for labels in self._children if labels[index] == value]:
            del self._children[labels]
            self._metric.remove(*labels)


class RouterMetrics:
    """All metrics of one router instance; `render()` is the body of its `/metrics` endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.scheduler_duration = Histogram(
            "kvroute_scheduler_duration_seconds",
            "End-to-end time of one scheduling cycle.",
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.plugin_duration = Histogram(
            "kvroute_scheduler_plugin_duration_seconds",
            "Time of one call of one plugin at one extension point.",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=PLUGIN_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "kvroute_scheduler_decisions_total",
            "Primary endpoint picked, per scheduling profile.",
            ["endpoint", "profile"],
            registry=r,
        )
        self.scheduler_errors = Counter(
            "kvroute_scheduler_errors_total",
            "Scheduling cycles that produced no endpoint, by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "kvroute_requests_total", "Requests answered, by API and HTTP status code.", ["api", "code"], registry=r
        )
        self.in_flight = Gauge(
            "kvroute_requests_in_flight", "Requests forwarded and not yet complete.", ["endpoint"], registry=r
        )
        self.prefix_hit_ratio = Histogram(
            "kvroute_prefix_hit_ratio",
            "Fraction of the prompt's prefix blocks found on the picked endpoint.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "kvroute_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["api"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "kvroute_config_reloads_total", "Configuration reloads, by result.", ["result"], registry=r
        )
        self._plugin_duration = _Children(self.plugin_duration)
        self._decisions = _Children(self.decisions)
        self._scheduler_errors = _Children(self.scheduler_errors)
        self._requests = _Children(self.requests)
        self._in_flight = _Children(self.in_flight)
        self._request_duration = _Children(self.request_duration)
        self._config_reloads = _Children(self.config_reloads)

    # Scheduler (structurally a `kvroute.router.scheduling.SchedulerMetrics`).

    def plugin_observer(self, extension_point: str, plugin_type: str, plugin_name: str) -> Callable[[float], None]:
        """The `observe` of one plugin's latency histogram, for a runner to bind once and call per plugin call."""
        return self._plugin_duration.get(extension_point, plugin_type, plugin_name).observe

    def observe_scheduling(self, seconds: float) -> None:
        self.scheduler_duration.observe(seconds)

    def record_decision(self, profile: str, endpoint: str) -> None:
        self._decisions.get(endpoint, profile).inc()

    def record_scheduling_error(self, reason: str) -> None:
        self._scheduler_errors.get(reason).inc()

    # Front doors.

    def record_request(self, api: str, code: int, seconds: float) -> None:
        self._requests.get(api, str(code)).inc()
        self._request_duration.get(api).observe(seconds)

    def in_flight_gauge(self, endpoint: str) -> Gauge:
        """The in-flight gauge of one endpoint (`inc()` when forwarding, `dec()` on completion)."""
        return self._in_flight.get(endpoint)

    def observe_prefix_hit_ratio(self, ratio: float) -> None:
        self.prefix_hit_ratio.observe(ratio)

    def forget_endpoint(self, endpoint: str) -> None:
        """Drops the per-endpoint series of an endpoint that left the pool."""
        self._in_flight.remove_where(0, endpoint)
        self._decisions.remove_where(0, endpoint)

    # Configuration.

    def record_config_reload(self, success: bool) -> None:
        self._config_reloads.get("success" if success else "failure").inc()

    def render(self) -> bytes:
        """Text exposition format; serve with `CONTENT_TYPE`."""
        return generate_latest(self.registry)
