"""`/metrics`: vLLM 0.34's metric names and labels, read from the live engines at scrape time.

Every series carries `model_name` and `engine` (the data-parallel rank, "0" without data parallelism), as vLLM's
do; `vllm:cache_config_info` has one series per engine with vLLM's CacheConfig labels (`block_size`,
`num_gpu_blocks`, ...). `vllm:lora_requests_info` is one series for the server (vLLM's has no engine label).

Every app owns its `CollectorRegistry`, so several servers in one process never clash. Gauges and the engine's
token counters are produced by a collector that reads the engine when scraped; latency histograms and the
finished-request counter are fed by the driver (as a `RequestObserver`) in modelled seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.request import FinishReason
from kvroute.simulator.server.driver import RequestStream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; fine steps where a warm or short prompt lands, coarse ones for long prefills and queueing.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 60, 120, 300)


# `vllm:cache_config_info` labels besides block_size/num_gpu_blocks/engine, as vLLM 0.34's CacheConfig reports them.
_CACHE_INFO = {
    "cache_dtype": "auto",
    "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.9",
    "num_cpu_blocks": "None",
    "prefix_caching_hash_algo": "sha256",
}
_LABELS = ["model_name", "engine"]  # vLLM's: one series per engine (data-parallel rank), engine="0", "1", ...


class _EngineCollector(Collector):
    def __init__(self, engines: Sequence[Engine], model_name: str) -> None:
        self._engines = engines
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        model, ranks = self._model, list(enumerate(self._engines))
        gauges = (
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", "num_waiting"),
            ("vllm:num_requests_running", "Requests in the running batch.", "num_running"),
            ("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", "kv_usage"),
        )
        for name, doc, attribute in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=_LABELS)
            for rank, engine in ranks:
                gauge.add_metric([model, str(rank)], getattr(engine, attribute))
            yield gauge
        counters = (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", "prefix_queries_tokens"),
            ("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.", "prefix_hits_tokens"),
            ("vllm:prompt_tokens", "Prompt tokens of requests that produced a token.", "prompt_tokens_total"),
            ("vllm:generation_tokens", "Generated tokens.", "generation_tokens_total"),
            ("vllm:num_preemptions", "Sequences preempted for lack of KV blocks.", "num_preemptions"),
        )
        for name, doc, attribute in counters:
            counter = CounterMetricFamily(name, doc, labels=_LABELS)
            for rank, engine in ranks:
                counter.add_metric([model, str(rank)], getattr(engine, attribute))
            yield counter
        info_labels = ["block_size", "num_gpu_blocks", "engine", *_CACHE_INFO]
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=info_labels
        )
        for rank, engine in ranks:
            profile = engine.profile
            info.add_metric([str(profile.block_size), str(profile.num_gpu_blocks), str(rank), *_CACHE_INFO.values()], 1)
        yield info
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "LoRA adapters in use; the value is the time of the reading, as vLLM reports it.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        running: list[str] = []
        waiting: list[str] = []
        for _, engine in ranks:
            on, queued = engine.lora_adapters()
            running += [name for name in on if name not in running]
            waiting += [name for name in queued if name not in waiting]
        max_loras = self._engines[0].profile.max_loras
        lora.add_metric([str(max_loras), ",".join(running), ",".join(waiting)], time.time())
        yield lora


class _RankObserver:
    """The driver's observer for one engine: feeds that engine's series."""

    def __init__(self, metrics: ServerMetrics, rank: int) -> None:
        self._metrics = metrics
        self._rank = str(rank)

    def first_token(self, stream: RequestStream) -> None:
        self._metrics.first_token(stream, self._rank)

    def finished(self, stream: RequestStream) -> None:
        self._metrics.finished(stream, self._rank)


class ServerMetrics:
    """The registry behind `/metrics`; `observer(rank)` is the driver's observer of an engine's first tokens and
    finished requests."""

    def __init__(self, engines: Engine | Sequence[Engine], model_name: str) -> None:
        engines = [engines] if isinstance(engines, Engine) else list(engines)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engines, model_name))
        self._model = model_name
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token (modelled seconds).",
            _LABELS,
            registry=self.registry,
            buckets=_TTFT_BUCKETS,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token (modelled seconds).",
            _LABELS,
            registry=self.registry,
            buckets=_E2E_BUCKETS,
        )
        self._finished = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*_LABELS, "finished_reason"],
            registry=self.registry,
        )
        # Every series exists from the start (at zero), as in vLLM, so rates work from the first scrape.
        for rank in range(len(engines)):
            self._ttft.labels(model_name, str(rank))
            self._e2e.labels(model_name, str(rank))
            for reason in FinishReason:
                self._finished.labels(model_name, str(rank), reason.value)

    def observer(self, rank: int) -> _RankObserver:
        return _RankObserver(self, rank)

    def first_token(self, stream: RequestStream, rank: str = "0") -> None:
        if stream.first_token_at is not None:
            self._ttft.labels(self._model, rank).observe(max(0.0, stream.first_token_at - stream.arrival))

    def finished(self, stream: RequestStream, rank: str = "0") -> None:
        reason = stream.finish_reason.value if stream.finish_reason is not None else "abort"
        self._finished.labels(self._model, rank, reason).inc()
        if stream.finished_at is not None and reason != "abort":
            self._e2e.labels(self._model, rank).observe(max(0.0, stream.finished_at - stream.arrival))

    def render(self) -> bytes:
        return generate_latest(self.registry)
