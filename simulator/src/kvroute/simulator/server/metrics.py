"""`/metrics`: vLLM's metric names, read from the live engine at scrape time.

Every app owns its `CollectorRegistry`, so several servers in one process never clash. Gauges and the engine's
token counters are produced by a collector that reads the engine when scraped; latency histograms and the
finished-request counter are fed by the driver (as a `RequestObserver`) in modelled seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

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


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        engine, labels = self._engine, [self._model]
        gauges = (
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", engine.num_waiting),
            ("vllm:num_requests_running", "Requests in the running batch.", engine.num_running),
            ("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", engine.kv_usage),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(labels, value)
            yield gauge
        counters = (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", engine.prefix_queries_tokens),
            ("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.", engine.prefix_hits_tokens),
            ("vllm:prompt_tokens", "Prompt tokens of requests that produced a token.", engine.prompt_tokens_total),
            ("vllm:generation_tokens", "Generated tokens.", engine.generation_tokens_total),
            ("vllm:num_preemptions", "Sequences preempted for lack of KV blocks.", engine.num_preemptions),
        )
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(labels, value)
            yield counter
        profile = engine.profile
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "KV-cache configuration (value 1).",
            labels=["model_name", "block_size", "num_gpu_blocks", "enable_prefix_caching", "cache_dtype"],
        )
        info.add_metric([self._model, str(profile.block_size), str(profile.num_gpu_blocks), "True", "auto"], 1)
        yield info
        running, waiting = engine.lora_adapters()
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "LoRA adapters in use; the value is the time of the reading, as vLLM reports it.",
            labels=["model_name", "max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        lora.add_metric([self._model, str(profile.max_loras), ",".join(running), ",".join(waiting)], time.time())
        yield lora


class ServerMetrics:
    """The registry behind `/metrics`; also the driver's observer of first tokens and finished requests."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        self._model = model_name
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token (modelled seconds).",
            ["model_name"],
            registry=self.registry,
            buckets=_TTFT_BUCKETS,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token (modelled seconds).",
            ["model_name"],
            registry=self.registry,
            buckets=_E2E_BUCKETS,
        )
        self._finished = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        # Every series exists from the start (at zero), as in vLLM, so rates work from the first scrape.
        self._ttft.labels(model_name)
        self._e2e.labels(model_name)
        for reason in FinishReason:
            self._finished.labels(model_name, reason.value)

    def first_token(self, stream: RequestStream) -> None:
        if stream.first_token_at is not None:
            self._ttft.labels(self._model).observe(max(0.0, stream.first_token_at - stream.arrival))

    def finished(self, stream: RequestStream) -> None:
        reason = stream.finish_reason.value if stream.finish_reason is not None else "abort"
        self._finished.labels(self._model, reason).inc()
        if stream.finished_at is not None and reason != "abort":
            self._e2e.labels(self._model).observe(max(0.0, stream.finished_at - stream.arrival))

    def render(self) -> bytes:
        return generate_latest(self.registry)
