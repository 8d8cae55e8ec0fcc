"""One metrics page for the workers of a router pod: their Prometheus expositions merged into one.

Every worker of `kvroute router --workers N` counts only what it served; a scrape of the pod must see the pod.
Samples of the same name and labels are combined: counters, histograms and summaries are summed (each worker
counted its own events), and so are the gauges of `ADDITIVE_GAUGES` (what each worker holds: its requests in
flight, its queue, its connections). Every other gauge describes the shared view (an endpoint's breaker state, an
index's size, the fleet's peers) and takes the largest of the workers' values. `kvroute_router_workers` tells how
many workers' pages went into the merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

ADDITIVE_GAUGES = frozenset(
    {
        "kvroute_requests_in_flight",
        "kvroute_flow_control_queue_size",
        "kvroute_flow_control_queue_bytes",
        "kvroute_proxy_connections",
    }
)
WORKERS_GAUGE = "kvroute_router_workers"

_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Family:
    __slots__ = ("additive", "metric", "samples")

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.samples: dict[_Key, float] = {}
        self.additive = metric.type != "gauge" or metric.name in ADDITIVE_GAUGES

    def add(self, metric: Metric) -> None:
        samples = self.samples
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            seen = samples.get(key)
            if seen is None:
                samples[key] = sample.value
            elif self.additive:
                samples[key] = seen + sample.value
            else:
                samples[key] = max(seen, sample.value)

    def merged(self) -> Metric:
        metric = Metric(self.metric.name, self.metric.documentation, self.metric.type, self.metric.unit)
        for (name, labels), value in self.samples.items():
            metric.add_sample(name, dict(labels), value)
        return metric


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_pages(pages: Sequence[bytes]) -> bytes:
    """The expositions `pages` (Prometheus text format, one per worker) as one."""
    families: dict[str, _Family] = {}
    for page in pages:
        for metric in text_string_to_metric_families(page.decode()):
            family = families.get(metric.name)
            if family is None:
                family = families[metric.name] = _Family(metric)
            if family.metric.type != metric.type:
                continue  # two workers of one pod run the same code: a type clash is a page to ignore
            family.add(metric)
    workers = Metric(WORKERS_GAUGE, "Router worker processes whose metrics this page merges.", "gauge")
    workers.add_sample(WORKERS_GAUGE, {}, float(len(pages)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*(family.merged() for family in families.values()), workers]))
    return generate_latest(registry)
