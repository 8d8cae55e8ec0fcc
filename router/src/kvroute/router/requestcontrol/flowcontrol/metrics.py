"""The flow-control metrics, on the router's registry.

- `kvroute_flow_control_queue_size{priority, flow}`: requests waiting, per band and flow;
- `kvroute_flow_control_queue_bytes{priority}`: bytes of request bodies waiting, per band;
- `kvroute_flow_control_queue_duration_seconds{priority, flow}`: time from arrival to release (0 for a request
  released at once), of the requests released;
- `kvroute_flow_control_rejected_total{priority, reason}`: requests that left without being served, by reason:
  `capacity` (429, over a limit), `ttl_expired` (503), `disconnected` (the client went away while queued).

Flow ids come from clients, so the `flow` label is bounded: the first `MAX_FLOW_LABELS` flows seen keep their own
series and every later one is counted under `flow="other"`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_FLOW_LABELS = 32
OTHER_FLOW = "other"
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FlowControlMetrics:
    def __init__(self, registry: CollectorRegistry, max_flow_labels: int = MAX_FLOW_LABELS) -> None:
        self._flows: set[str] = set()
        self._max_flows = max_flow_labels
        self.queue_size = Gauge(
            "kvroute_flow_control_queue_size",
            "Requests waiting in the flow-control queue, by priority band and flow.",
            ["priority", "flow"],
            registry=registry,
        )
        self.queue_bytes = Gauge(
            "kvroute_flow_control_queue_bytes",
            "Bytes of request bodies waiting in the flow-control queue, by priority band.",
            ["priority"],
            registry=registry,
        )
        self.queue_duration = Histogram(
            "kvroute_flow_control_queue_duration_seconds",
            "Time requests waited in the flow-control queue before being released, by priority band and flow.",
            ["priority", "flow"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "kvroute_flow_control_rejected_total",
            "Requests that left the flow-control queue without being served, by priority band and reason.",
            ["priority", "reason"],
            registry=registry,
        )

    def flow_label(self, flow: str) -> str:
        if flow in self._flows:
            return flow
        if len(self._flows) < self._max_flows:
            self._flows.add(flow)
            return flow
        return OTHER_FLOW

    def queued(self, priority: int, flow: str, change: int, band_bytes: int) -> None:
        """A request of `flow` entered (`change` 1) or left (-1) the band, which now holds `band_bytes`."""
        self.queue_size.labels(str(priority), self.flow_label(flow)).inc(change)
        self.queue_bytes.labels(str(priority)).set(band_bytes)

    def observe_wait(self, priority: int, flow: str, seconds: float) -> None:
        self.queue_duration.labels(str(priority), self.flow_label(flow)).observe(seconds)

    def reject(self, priority: int, reason: str) -> None:
        self.rejected.labels(str(priority), reason).inc()
