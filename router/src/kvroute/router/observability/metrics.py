"""The router's Prometheus metrics, all defined here so every name and label set has one place.

Each `RouterMetrics` owns its own `CollectorRegistry`, so several routers (tests, the demo) can live in one
process. Labelled children are cached per label tuple: `Metric.labels()` validates and locks on every call,
which the scheduler's hot path should not pay for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kvroute.router.observability.histogram import LoopHistogram

# From 50 µs (a cache-only pick on a small pool) to 100 ms (something is badly wrong).
SCHEDULER_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# One plugin call is usually a few microseconds.
PLUGIN_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Scraped metrics are 0 to one scrape interval old (50 ms by default) where requests go; older means slow polling.
AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

M = TypeVar("M", Counter, Gauge)


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
    """All metrics of one router instance; `render()` is the body of its `/metrics` endpoint, or `gather()` when
    set: the page of the whole pod, for a worker of several (`runtime.worker.Siblings`)."""

    def __init__(self) -> None:
        self.gather: Callable[[], Awaitable[bytes]] | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.scheduler_duration = LoopHistogram(
            "kvroute_scheduler_duration_seconds",
            "End-to-end time of one scheduling cycle.",
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.plugin_duration = LoopHistogram(
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
        self.prefix_hit_ratio = LoopHistogram(
            "kvroute_prefix_hit_ratio",
            "Fraction of the prompt's prefix blocks found on the picked endpoint.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.request_duration = LoopHistogram(
            "kvroute_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["api"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.metrics_age = LoopHistogram(
            "kvroute_endpoint_metrics_age_seconds",
            "Age of the scraped metrics of the endpoint a request was scheduled to, at the decision.",
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "kvroute_config_reloads_total", "Configuration reloads, by result.", ["result"], registry=r
        )
        self.preparation_failures = Counter(
            "kvroute_request_preparation_failures_total",
            "Requests a Preparer could not prepare before scheduling (they were scheduled without).",
            ["plugin_type", "plugin_name"],
            registry=r,
        )
        self.kv_events = Counter(
            "kvroute_kv_events_total", "KV events received from engines and applied, by kind.", ["kind"], registry=r
        )
        self.kv_event_gaps = Counter(
            "kvroute_kv_events_sequence_gaps_total",
            "Gaps in a KV event publisher's sequence numbers (messages lost).",
            registry=r,
        )
        self.kv_event_restarts = Counter(
            "kvroute_kv_events_publisher_restarts_total",
            "KV event publishers seen restarting (sequence number going back); their entries were dropped.",
            registry=r,
        )
        self.kv_event_malformed = Counter(
            "kvroute_kv_events_malformed_messages_total", "KV event messages dropped as malformed.", registry=r
        )
        self.kv_event_unknown = Counter(
            "kvroute_kv_events_unknown_endpoint_messages_total",
            "KV event messages dropped because their topic names no endpoint of the pool.",
            registry=r,
        )
        self.kv_event_unindexed = Counter(
            "kvroute_kv_events_unindexed_blocks_total",
            "Stored blocks a consumer could not index (parent block never seen, no tokens).",
            registry=r,
        )
        self.kv_index_entries = Gauge(
            "kvroute_kv_index_entries", "Entries held by a KV events consumer's index.", ["plugin_name"], registry=r
        )
        self.breaker_state = Gauge(
            "kvroute_endpoint_breaker_state",
            "Circuit breaker of an endpoint with failures on record: 0 closed, 1 open (ejected), 2 half-open.",
            ["endpoint"],
            registry=r,
        )
        self.ejections = Counter(
            "kvroute_endpoint_ejections_total",
            "Times an endpoint's circuit breaker opened, leaving it out of the candidates, by reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "kvroute_upstream_retries_total",
            "Requests sent again to a fallback endpoint before any response byte reached the client, by reason.",
            ["reason"],
            registry=r,
        )
        self._breaker_state = _Children(self.breaker_state)
        self._ejections = _Children(self.ejections)
        self._upstream_retries = _Children(self.upstream_retries)
        self._preparation_failures = _Children(self.preparation_failures)
        self._kv_events = _Children(self.kv_events)
        self._kv_index_entries = _Children(self.kv_index_entries)
        self._decisions = _Children(self.decisions)
        self._scheduler_errors = _Children(self.scheduler_errors)
        self._requests = _Children(self.requests)
        self._in_flight = _Children(self.in_flight)
        self._config_reloads = _Children(self.config_reloads)

    # Scheduler (structurally a `kvroute.router.scheduling.SchedulerMetrics`).

    def plugin_observer(self, extension_point: str, plugin_type: str, plugin_name: str) -> Callable[[float], None]:
        """The `observe` of one plugin's latency histogram, for a runner to bind once and call per plugin call."""
        return self.plugin_duration.labels(extension_point, plugin_type, plugin_name).observe

    def observe_scheduling(self, seconds: float) -> None:
        self.scheduler_duration.observe(seconds)

    def record_decision(self, profile: str, endpoint: str) -> None:
        self._decisions.get(endpoint, profile).inc()

    def record_scheduling_error(self, reason: str) -> None:
        self._scheduler_errors.get(reason).inc()

    # Front doors.

    def record_request(self, api: str, code: int, seconds: float) -> None:
        self._requests.get(api, str(code)).inc()
        self.request_duration.labels(api).observe(seconds)

    def in_flight_gauge(self, endpoint: str) -> Gauge:
        """The in-flight gauge of one endpoint (`inc()` when forwarding, `dec()` on completion)."""
        return self._in_flight.get(endpoint)

    def observe_prefix_hit_ratio(self, ratio: float) -> None:
        self.prefix_hit_ratio.observe(ratio)

    def observe_metrics_age(self, seconds: float) -> None:
        self.metrics_age.observe(seconds)

    def forget_endpoint(self, endpoint: str) -> None:
        """Drops the per-endpoint series of an endpoint that left the pool."""
        self._in_flight.remove_where(0, endpoint)
        self._decisions.remove_where(0, endpoint)
        self._breaker_state.remove_where(0, endpoint)
        self._ejections.remove_where(0, endpoint)

    def record_breaker_state(self, endpoint: str, state: int, ejected_because: str | None) -> None:
        """An endpoint's breaker changed state; `ejected_because` names why it opened (None: it did not)."""
        self._breaker_state.get(endpoint).set(state)
        if ejected_because is not None:
            self._ejections.get(endpoint, ejected_because).inc()

    def record_retry(self, reason: str) -> None:
        self._upstream_retries.get(reason).inc()

    # Request preparation.

    def record_preparation_failure(self, plugin_type: str, plugin_name: str) -> None:
        self._preparation_failures.get(plugin_type, plugin_name).inc()

    # KV events.

    def record_kv_events(self, kind: str, count: int) -> None:
        self._kv_events.get(kind).inc(count)

    def record_kv_gap(self) -> None:
        self.kv_event_gaps.inc()

    def record_kv_restart(self) -> None:
        self.kv_event_restarts.inc()

    def record_kv_malformed(self) -> None:
        self.kv_event_malformed.inc()

    def record_kv_unknown_endpoint(self) -> None:
        self.kv_event_unknown.inc()

    def record_kv_unindexed(self, blocks: int) -> None:
        self.kv_event_unindexed.inc(blocks)

    def set_kv_index_entries(self, plugin_name: str, entries: int) -> None:
        self._kv_index_entries.get(plugin_name).set(entries)

    def forget_kv_index(self, plugin_name: str) -> None:
        """Drops the gauge of a consumer that left the configuration."""
        self._kv_index_entries.remove_where(0, plugin_name)

    # Configuration.

    def record_config_reload(self, success: bool) -> None:
        self._config_reloads.get("success" if success else "failure").inc()

    # Fleet sync.

    def register_fleet(self, stats: Callable[[], FleetStats]) -> None:
        """Expose fleet sync's counters, read from `stats()` at every scrape (nothing is counted twice)."""
        self.registry.register(_FleetCollector(stats))

    def render(self) -> bytes:
        """Text exposition format; serve with `CONTENT_TYPE`."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class FleetStats:
    """Fleet sync's totals since the router started, and its state now."""

    batches_sent: int = 0
    bytes_sent: int = 0
    batches_received: int = 0  # from peers, decoded (own batches and malformed ones excluded)
    batches_malformed: int = 0
    records_applied: int = 0
    records_rejected: int = 0
    sequence_gaps: int = 0
    peers_expired: int = 0
    peer_requests_stale: int = 0
    peers: int = 0  # heard from within the peer timeout
    peer_addresses: int = 0  # subscribed to
    peer_requests_open: int = 0


_FLEET_COUNTERS = (
    ("batches_sent", "kvroute_fleet_batches_sent", "Batches of routing records published to the peers."),
    ("bytes_sent", "kvroute_fleet_sent_bytes", "Bytes of the batches published to the peers."),
    ("batches_received", "kvroute_fleet_batches_received", "Peers' batches received and decoded."),
    ("batches_malformed", "kvroute_fleet_batches_malformed", "Messages received that are not fleet batches."),
    ("records_applied", "kvroute_fleet_records_applied", "Peers' records applied to this router's plugins."),
    ("records_rejected", "kvroute_fleet_records_rejected", "Peers' records (or plugin values) rejected."),
    ("sequence_gaps", "kvroute_fleet_sequence_gaps", "Gaps in a peer's batch sequence (batches lost on the way)."),
    ("peers_expired", "kvroute_fleet_peers_expired", "Peers forgotten after the peer timeout; their requests end."),
    ("peer_requests_stale", "kvroute_fleet_peer_requests_stale", "Peers' requests ended for lack of news."),
)
_FLEET_GAUGES = (
    ("peers", "kvroute_fleet_peers", "Peers heard from within the peer timeout."),
    ("peer_addresses", "kvroute_fleet_peer_addresses", "Peer addresses subscribed to (from discovery)."),
    ("peer_requests_open", "kvroute_fleet_peer_requests_open", "Peers' requests in flight, as known here."),
)


class _FleetCollector(Collector):
    def __init__(self, stats: Callable[[], FleetStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for field, name, documentation in _FLEET_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field))
        for field, name, documentation in _FLEET_GAUGES:
            yield GaugeMetricFamily(name, documentation, value=getattr(stats, field))
