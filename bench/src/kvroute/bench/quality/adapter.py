"""kvroute's real scheduler inside the discrete-event harness.

A configuration document is loaded with the router's own loader and plugin registry (`load_config(..., rng=
random.Random(seed))`, so every picker draws from a seeded generator). Each simulated engine is an `Endpoint`
(`10.0.0.<i+1>:8000`, labelled `llm-d.ai/role: prefill|decode` on a P/D fleet); nothing is ever dialled. The
request's lifecycle is the Director's, minus HTTP:

- every `SCRAPE_INTERVAL_S` (50 ms, the router's default) of simulated time each endpoint's `EndpointMetrics` are
  replaced by a scrape of its engine (waiting, running, KV usage, LoRA adapters, block size and count), so
  scorers that read metrics see them up to 50 ms late, as in production;
- at arrival: `Scheduler.schedule()` over all endpoints with a fresh `CycleState`, then every `PreRequest` hook,
  then `on_response_headers` (a streamed response starts at once);
- each step's new tokens: `on_response_chunk` with `ResponseInfo.output_tokens` updated;
- completion: `on_response_complete` exactly once, with the usage (prompt and cached tokens) filled in.

The request is a streamed completion of `MODEL` (or of its LoRA adapter, which the request names as its model)
whose prompt is the workload's text. When the scheduling result carries a `DisaggregationPlan`, the harness runs
the request on the plan's prefill endpoint first.

Plugins that read the time (`uses_clock`) get the harness's virtual clock. When a `predicted-latency-scorer`
predicted the TTFT of the endpoint a request was sent to, the run also reports how far off it was
(`ttft_prediction_error_p50_s` / `_p90_s`: absolute error; `ttft_prediction_bias_s`: median of predicted -
actual), from a scorer that predicts the whole TTFT (not the prefill or decode part of a P/D pool).

The prefix scorer's index sweep runs on the wall clock; it drops only endpoints that no request was matched
against since the previous sweep, which never happens here because every request is matched against every
candidate, so results do not depend on how fast the machine is.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvroute.bench.quality.metrics import DIGITS, percentile
from kvroute.bench.quality.policies.base import Policy
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.config.builder import Registry
from kvroute.router.config.loader import load_config
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    LoraInfo,
    ResponseInfo,
)
from kvroute.router.framework.endpoint import ROLE_LABEL
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.predicted_latency import PredictedLatencyScorer, prediction_key
from kvroute.simulator.des.harness import EngineView, RequestRecord, Route, WorkloadRequest

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SCRAPE_INTERVAL_S = 0.05
_STREAM_HEADERS: Mapping[str, str] = {"content-type": "text/event-stream"}


def endpoints_for(fleet: Fleet) -> list[Endpoint]:
    return [
        Endpoint.create(
            f"10.0.{i // 250}.{i % 250 + 1}",
            8000,
            pod_name=f"engine-{i}",
            labels={ROLE_LABEL: role} if role != "both" else None,
        )
        for i, role in enumerate(fleet.roles)
    ]


def scrape(view: EngineView, now: float) -> EndpointMetrics:
    engine = view.engine
    running, waiting = engine.lora_adapters()
    return EndpointMetrics(
        waiting=view.num_waiting,
        running=view.num_running,
        kv_usage=view.kv_usage,
        lora=LoraInfo(engine.profile.max_loras, tuple(running), tuple(waiting)),
        block_size=engine.profile.block_size,
        num_gpu_blocks=engine.profile.num_gpu_blocks,
        scraped_at=now,
        stale=False,
    )


@dataclass(slots=True)
class _InFlight:
    state: CycleState
    request: LLMRequest
    endpoint: Endpoint
    response: ResponseInfo


class SchedulerPolicy(Policy):
    tick_interval = SCRAPE_INTERVAL_S

    def __init__(self, config_text: str, fleet: Fleet, seed: int, registry: Registry = REGISTRY) -> None:
        self.now = 0.0  # the harness's virtual time, the clock of plugins that measure latencies
        self.config = load_config(config_text, registry, rng=random.Random(seed), clock=lambda: self.now)
        self.endpoints = endpoints_for(fleet)
        self._index = {e.id: i for i, e in enumerate(self.endpoints)}
        self._in_flight: dict[str, _InFlight] = {}
        self.sync: FleetSync | None = None  # set when replicas share their decisions (`join_fleet`)
        self._predictors = [
            prediction_key(name)
            for name, plugin in self.config.plugins.items()
            if isinstance(plugin, PredictedLatencyScorer) and plugin.predicts_whole_ttft
        ]
        self._predicted: dict[str, float] = {}
        self._errors: list[float] = []  # predicted - actual TTFT, seconds

    def join_fleet(self, replica_id: str) -> FleetSync:
        """Share this replica's decisions with peers (`kvroute.router.fleet.sync`), as `--fleet-peers` does."""
        by_id = {e.id: e for e in self.endpoints}
        self.sync = FleetSync(replica_id, lambda: self.config, lambda: by_id)
        return self.sync

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        self.now = now
        for endpoint, view in zip(self.endpoints, engines, strict=True):
            endpoint.metrics = scrape(view, now)

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int | Route:
        self.now = now
        return self.schedule(self.llm_request(request))

    def llm_request(self, request: WorkloadRequest, headers: Mapping[str, str] | None = None) -> LLMRequest:
        """The router's view of `request`: a streamed completion of its prompt (of its adapter, if it names one)."""
        model = request.lora_name or MODEL
        return LLMRequest(
            request_id=request.request_id,
            model=model,
            api=ApiKind.COMPLETIONS,
            prompt=request.prompt,
            body={"model": model, "max_tokens": request.max_tokens, "stream": True},
            headers=headers or {},
            stream=True,
            cache_hit_threshold=request.cache_hit_threshold,
        )

    def schedule(self, llm_request: LLMRequest) -> int | Route:
        """Schedules the request over every endpoint and runs the PreRequest and response-header hooks, as the
        Director does at the instant it forwards a request."""
        config = self.config
        state = CycleState()
        result = config.scheduler.schedule(llm_request, self.endpoints, state)
        for hook in config.pre_request:
            hook.pre_request(state, llm_request, result)
        if self.sync is not None:
            self.sync.scheduled(config, state, llm_request, result)
        target = result.endpoints[0]
        response = ResponseInfo(status=200, headers=_STREAM_HEADERS)
        for response_hook in config.response_hooks:
            response_hook.on_response_headers(state, llm_request, target, response)
        request_id = llm_request.request_id
        self._in_flight[request_id] = _InFlight(state, llm_request, target, response)
        self._remember_prediction(request_id, state, target)
        plan = result.disaggregation
        if plan is not None:
            return Route(decode=self._index[plan.decode.id], prefill=self._index[plan.prefill.id])
        return self._index[target.id]

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        self.now = now
        flight = self._in_flight[record.request_id]
        flight.response.output_tokens += new_tokens
        for hook in self.config.response_hooks:
            hook.on_response_chunk(flight.state, flight.request, flight.endpoint, flight.response, new_tokens)
        if self.sync is not None:
            self.sync.progress(record.request_id, flight.response.output_tokens)

    def _remember_prediction(self, request_id: str, state: CycleState, target: Endpoint) -> None:
        for key in self._predictors:
            prediction = state.read(key)
            if prediction is not None and target.id in prediction.ttft:
                self._predicted[request_id] = prediction.ttft[target.id]
                return

    def extra_metrics(self) -> dict[str, Any]:
        if not self._errors:
            return {}
        errors = self._errors
        absolute = [abs(e) for e in errors]
        return {
            "ttft_prediction_error_p50_s": round(percentile(absolute, 0.5), DIGITS),
            "ttft_prediction_error_p90_s": round(percentile(absolute, 0.9), DIGITS),
            "ttft_prediction_bias_s": round(percentile(errors, 0.5), DIGITS),
        }

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self.now = now
        predicted = self._predicted.pop(record.request_id, None)
        if predicted is not None and record.ttft is not None:
            self._errors.append(predicted - record.ttft)
        flight = self._in_flight.pop(record.request_id)
        response = flight.response
        response.finish_reason = record.finish_reason
        response.prompt_tokens = record.prompt_tokens
        response.cached_tokens = record.cached_tokens
        for hook in self.config.response_hooks:
            hook.on_response_complete(flight.state, flight.request, flight.endpoint, response)
        if self.sync is not None:
            self.sync.completed(record.request_id)

    @property
    def in_flight(self) -> int:
        """Requests scheduled and not yet completed (0 after a run: every hook's state was released)."""
        return len(self._in_flight)
