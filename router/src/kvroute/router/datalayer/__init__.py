"""The router's data layer: which endpoints exist and what their model servers last reported.

Discovery (`static_discovery`, or a Kubernetes watch) hands endpoint sets to the `EndpointPool`; the pool swaps
its snapshot atomically and tells subscribers what was added and removed; the `MetricsScraper` keeps one polling
task per endpoint and replaces each endpoint's `EndpointMetrics` with what `metrics_parser` read from `/metrics`.
The scheduler only ever reads `EndpointPool.snapshot()` and `Endpoint.metrics`.
"""
