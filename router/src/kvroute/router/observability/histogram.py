"""`LoopHistogram`: a Prometheus histogram for the serving thread's per-request observations, without locks.

prometheus_client's `Histogram` takes a lock for every counter it touches (two per observation), which made
metrics a tenth of a proxied request's CPU. The router's per-request histograms (scheduling and plugin latencies,
request durations, prefix hit ratios, metrics ages) are observed only on the serving thread, where the event loop
runs; this histogram keeps plain counters for them and builds the exposition when the registry is collected (on
the same thread: the `/metrics` handlers run on the loop). Observing from another thread could lose counts.
The exposition is the same as `Histogram`'s: cumulative `_bucket{le=...}` series ending at `+Inf`, `_count`,
`_sum`; an unlabelled histogram shows its zero buckets before its first observation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Series:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        self.counts[bisect_left(self._bounds, value)] += 1


class LoopHistogram(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], _Series] = {}
        if not self.labelnames:
            self._series[()] = _Series(self._bounds)
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, not {len(values)}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._bounds)
        return series

    def remove(self, *values: str) -> None:
        self._series.pop(values, None)

    def observe(self, value: float) -> None:
        """For a histogram without labels."""
        self._series[()].observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._les, series.counts, strict=False):
                cumulative += count
                buckets.append((le, float(cumulative)))
            buckets.append(("+Inf", float(cumulative + series.counts[-1])))
            family.add_metric(list(values), buckets, series.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
