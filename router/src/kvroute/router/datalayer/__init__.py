"""The router's data layer: which endpoints exist and what their model servers last reported.

Discovery (`static_discovery`, or a Kubernetes watch) hands endpoint sets to the `EndpointPool`; the pool swaps
its snapshot atomically and tells subscribers what was added and removed; the `MetricsScraper` polls every
endpoint's `/metrics` on a thread of its own (`poller`, at the adaptive `cadence`) and replaces each endpoint's
`EndpointMetrics` with what `metrics_parser` read.
The scheduler only ever reads `EndpointPool.snapshot()` and `Endpoint.metrics`.
"""
