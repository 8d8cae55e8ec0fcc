"""`predicted-latency-scorer`: price every candidate in seconds of this request's time to first token.

For each candidate endpoint e, with `coefficients_e` its current costs (seconds per prefill token `a`, per step,
per decoding sequence and per context token in a step, per request; `latency.learner`, seeded from the
parameters) and `latency.model`'s step model:

    own_e     = the request's prompt tokens missing from e's prefix cache (`PrefixMatchInfo` of the plugin named
                `prefixPluginName`; the whole prompt without it)
    queued_e  = uncached prompt tokens of the requests this router (and its fleet peers) sent to e that have no
                first token yet, less the progress of the oldest of them (`latency.load`)
              + max(0, waiting_e - prefilling_e) * mean_own      (requests in e's scraped waiting queue that this
                router did not send, at the mean uncached size seen so far)
    decode_e  = max(decoding_e, running_e)       (sequences decoding beside it: tracked, or scraped if more)
    context_e = max(context tokens of the tracked decoding requests, kv_usage_e * capacity_e)
    held_e    = max(KV tokens of the tracked requests (uncached prompt + expected output), kv_usage_e * capacity_e)
    wait_e    = kvWaitCharge * min(1, overflow_e / held_e) * mean_output       (decode-only steps to wait)
                where overflow_e = held_e + prompt + expected output - capacity_e > 0, else 0
                (capacity_e = num_gpu_blocks * block_size; unknown: no wait)
    ttft_e    = model.predict_ttft(coefficients_e, queued_e, own_e, decode_e, context_e, wait_e)

A request that does not fit in e's free KV cache waits until enough running requests end: that share of them,
each about a mean output length (in steps) from its end. Then the charge for the capacity the request takes from
the requests that will queue behind it on e, which its own prefill delays:

    behind_e  = arrivalCharge * rate / candidates * ttft_e      (rate: requests per second scheduled through the
                pool, this router and its fleet peers, an exponentially decaying count over about 1 s)
    cost_e    = ttft_e + (capacityCharge + behind_e) * a * own_e

Without a charge a router that only minimises each request's own TTFT recomputes shared prefixes on idle
endpoints and falls behind under load; a fixed charge (`capacityCharge`) is too much at low load and too little
in a burst, which is what the arrival term measures.

    score_e = max(0, 1 - (cost_e - min(cost)) / scoreScaleSeconds)

so the cheapest endpoint scores 1 and every `scoreScaleSeconds` (default 1 s) of extra cost takes 1 off; another
scorer of weight w can move the pick by at most w * scoreScaleSeconds seconds (divided by this scorer's weight).

The expected output is the request's `max_tokens` (or `max_completion_tokens`) capped at the mean output length
seen so far (seeded at `outputTokensEstimate`). Scraped queue, batch and KV figures are used only when fresh.

Learning (`learning`, default on): at the request's first output token the observed TTFT (from scheduling, on
the injected clock) is fitted against the features of its prediction; each later chunk of `n` tokens gives an
inter-token interval (elapsed / n) fitted as one decode-only step with the tracked decoding sequences and their
context, but only while the endpoint has no prefill in flight (tracked, or a scraped waiting queue): how many
prompt tokens a step computed is unknown then. A peer's requests (fleet sync) charge the load here but teach
nothing: their timings reach this router late.

P/D: in a `prefill` profile set `profileName: prefill`, so the request's prefill target is charged (and released
at the first token, when the prefill is over) instead of the primary (decode) target; the predicted TTFT then
prices the prefill endpoint's queue and the uncached prompt there. In the `decode` profile of a pool that
disaggregates, `remotePrefill: true` prices a decode endpoint without any prefill of its own (`own_e = 0`): the
steps it takes to join its decode batch, and the wait for KV room for the whole prompt; it also publishes the
cost of the endpoint computing the prompt itself (`LatencyPrediction.local_cost`: its TTFT, the charges above,
and `decode_e * a * own_e` for the sequences decoding there that its prefill delays), which `pd-profile-handler`
with `decider: predicted-latency` weighs against the remote path. A disaggregated request's
observed TTFT includes the remote prefill and teaches nothing (its inter-token times still do); a request the
handler kept whole is charged and learned from as in an aggregated pool.

The predictions (seconds, before the charges) are published in `CycleState` under `prediction_key(<name>)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from kvroute.router.framework import (
    Clock,
    CycleState,
    Endpoint,
    EndpointObserver,
    FleetShared,
    LLMRequest,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
    Scorer,
    StateKey,
)
from kvroute.router.plugins.fleet_values import fields
from kvroute.router.plugins.latency.learner import CoefficientLearner
from kvroute.router.plugins.latency.load import EndpointLoad, Flight, LoadBook
from kvroute.router.plugins.latency.model import (
    EngineShape,
    Features,
    StepCosts,
    step_features,
)
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import estimate_tokens
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key

_MEAN_ALPHA = 0.05  # weight of one observation in the running means (about the last 20 requests)
_RATE_WINDOW_S = 1.0  # time constant of the arrival-rate estimate


@dataclass(frozen=True, slots=True)
class LatencyPrediction:
    """Per endpoint id, the predicted TTFT in seconds (before the charges) and the cost that was scored; with
    `remotePrefill`, also the cost if the endpoint computed the prompt itself (`local_cost`; else the same)."""

    ttft: Mapping[str, float]
    cost: Mapping[str, float]
    local_cost: Mapping[str, float]


_PREDICTION_KEYS: dict[str, StateKey[LatencyPrediction]] = {}


def prediction_key(plugin_name: str) -> StateKey[LatencyPrediction]:
    key = _PREDICTION_KEYS.get(plugin_name)
    if key is None:
        key = _PREDICTION_KEYS.setdefault(plugin_name, StateKey(f"{plugin_name}/latency-prediction"))
    return key


class PredictedLatencyScorer(Scorer, PreRequest, ResponseHook, FleetShared, EndpointObserver):
    type_name = "predicted-latency-scorer"
    uses_clock = True

    class Params(PluginParams):
        prefix_plugin_name: str = Field(
            default="prefix-cache-scorer",
            min_length=1,
            description="Name of the prefix plugin whose match info gives each endpoint's cached prefix.",
        )
        profile_name: str | None = Field(
            default=None,
            min_length=1,
            description="Profile whose pick is charged (default: the primary profile); `prefill` in a P/D prefill "
            "profile.",
        )
        remote_prefill: bool = Field(
            default=False,
            description="The candidates receive the prompt's KV from a prefill endpoint (a P/D decode profile): no "
            "prefill is priced here, and observed TTFTs (which include the remote prefill) teach nothing.",
        )
        capacity_charge: float = Field(default=0.5, ge=0.0, description="Extra multiples of the own prefill time.")
        arrival_charge: float = Field(
            default=0.5,
            ge=0.0,
            description="Multiple of the requests expected to arrive behind this one that its own prefill delays.",
        )
        kv_wait_charge: float = Field(
            default=1.0,
            ge=0.0,
            description="Multiple of the predicted wait for KV blocks when the request does not fit (0: ignore).",
        )
        score_scale_seconds: float = Field(
            default=1.0,
            gt=0.0,
            description="Seconds of extra cost that take 1 off the score.",
        )
        prefill_tokens_per_second: float = Field(
            default=27_778.0, gt=0.0, description="Prior prefill speed per endpoint."
        )
        step_overhead_seconds: float = Field(default=0.006, gt=0.0, description="Prior fixed cost of one engine step.")
        decode_seconds_per_sequence: float = Field(
            default=30e-6,
            ge=0.0,
            description="Prior step cost per decoding sequence.",
        )
        decode_seconds_per_context_token: float = Field(
            default=0.039e-6,
            ge=0.0,
            description="Prior step cost per token of context the decoding sequences attend over.",
        )
        request_overhead_seconds: float = Field(
            default=0.001,
            gt=0.0,
            description="Prior time a request costs outside the engine's steps (network, HTTP, tokenization).",
        )
        max_batched_tokens: int = Field(default=8192, ge=1, description="Tokens one engine step computes at most.")
        output_tokens_estimate: int = Field(default=256, ge=1, description="Output length assumed before any is seen.")
        learning: bool = Field(default=True, description="Fit the coefficients to the observed latencies.")
        forgetting: float = Field(
            default=0.995, gt=0.0, le=1.0, description="Forgetting factor of the online fit (1: never forget)."
        )

    def __init__(self, name: str, params: Params | None = None, *, clock: Clock | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._p = params
        self._clock: Clock = clock or time.monotonic
        self._match_key = prefix_match_key(params.prefix_plugin_name)
        self._flight_key: StateKey[Flight] = StateKey(f"{name}/flight")
        self._prediction_key = prediction_key(name)
        self._shape = EngineShape(max_batched_tokens=params.max_batched_tokens)
        prior = StepCosts(
            1.0 / params.prefill_tokens_per_second,
            params.step_overhead_seconds,
            params.decode_seconds_per_sequence,
            params.decode_seconds_per_context_token,
            params.request_overhead_seconds,
        )
        self.learner = CoefficientLearner(prior, forgetting=params.forgetting)
        self.loads = LoadBook()
        self._mean_own = 1024.0
        self._mean_output = float(params.output_tokens_estimate)
        self._rate = 0.0  # requests per second scheduled through the pool (this router and its peers)
        self._rate_at = 0.0

    # -- scoring ---------------------------------------------------------------------------------------------

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        info = state.read(self._match_key)
        prompt = _prompt_tokens(info, request)
        need = prompt + self._expected_output(request)
        ids = [e.id for e in endpoints]
        uncached = info.uncached_tokens_of(ids) if info is not None else [prompt] * len(ids)
        # Requests per second that each candidate can expect while this one's prefill is ahead of them.
        now = self._clock()
        rate = self._arrival_rate(now) * self._p.arrival_charge / max(1, len(endpoints))
        remote = self._p.remote_prefill
        ttft_list, cost_list = self._predict(endpoints, ids, [0] * len(ids) if remote else uncached, need, now, rate)
        ttfts = dict(zip(ids, ttft_list, strict=True))
        costs = dict(zip(ids, cost_list, strict=True))
        local = costs
        if remote:
            local_list = self._predict(endpoints, ids, uncached, need, now, rate, local=True)[1]
            local = dict(zip(ids, local_list, strict=True))
        previous = state.read(self._prediction_key)
        if previous is not None:  # a second profile of the same request: keep both profiles' candidates
            ttfts = {**previous.ttft, **ttfts}
            costs = {**previous.cost, **costs}
            local = {**previous.local_cost, **local}
        state.write(self._prediction_key, LatencyPrediction(ttfts, costs, local))
        if not endpoints:
            return {}
        low = min(cost_list)
        scale = self._p.score_scale_seconds
        # max(0.0, score) spelt out, as in `_predict`.
        return {
            endpoint_id: score if (score := 1.0 - (cost - low) / scale) > 0.0 else 0.0
            for endpoint_id, cost in zip(ids, cost_list, strict=True)
        }

    def _predict(
        self,
        endpoints: Sequence[Endpoint],
        ids: Sequence[str],
        owns: Sequence[int],
        need: int,
        now: float,
        rate: float,
        *,
        local: bool = False,
        features: list[Features] | None = None,
    ) -> tuple[list[float], list[float]]:
        """The predicted TTFT of this request on each endpoint and its cost (the module docstring's `ttft_e` and
        `cost_e`), `owns` its uncached prompt tokens there, `need` the KV tokens it will hold, `rate` the arrivals
        each candidate expects per second. With `local`, the cost is that of a decode endpoint computing the prompt
        itself: the delay its prefill adds to every sequence decoding there (which a prefill endpoint would not
        delay) is charged too. The model features of each TTFT are appended to `features` when given.

        This loop is most of a scheduling cycle's time, so `model.ttft_features` and `model.linear` are unrolled
        in it, to the same floats (`linear` of the appended features is the TTFT, bit for bit), and every
        `max`/`min` is a comparison: a builtin call per value would cost more than the arithmetic.
        """
        mean_own = self._mean_own
        mean_output = self._mean_output
        kv_wait_charge = self._p.kv_wait_charge
        charge = self._p.capacity_charge
        # As floats, the same values: float-with-float arithmetic is the interpreter's fast path.
        need_tokens = float(need)
        max_batched = float(self._shape.max_batched_tokens)
        ceil = math.ceil
        ttfts: list[float] = []
        costs: list[float] = []
        rows = zip(endpoints, self.loads.charged(ids), self.learner.coefficients(ids), owns, strict=True)
        for endpoint, load, (a, o, s, t, r), own in rows:
            if load is None:
                queued = decode = context = held = 0.0
                prefilling = 0
            else:
                queued = load.remaining_prefill(now, a)
                decode = float(load.decoding)
                context = float(load.context_tokens)
                held = float(load.kv_tokens)
                prefilling = load.prefilling
            metrics = endpoint.metrics
            capacity = (metrics.num_gpu_blocks or 0) * (metrics.block_size or 0)
            if not metrics.stale:
                waiting = metrics.waiting - prefilling
                if waiting > 0:
                    queued += waiting * mean_own
                running = float(metrics.running)
                decode = running if running > decode else decode
                used = metrics.kv_usage * capacity
                context = used if used > context else context
                held = used if used > held else held
            wait = 0.0
            overflow = held + need_tokens - capacity
            if capacity and overflow > 0 and kv_wait_charge:
                # Enough running requests must end first: that share of them, each about a mean output from its end.
                share = overflow / (1.0 if held < 1.0 else held)
                wait = kv_wait_charge * (share if share < 1.0 else 1.0) * mean_output
            work = queued + own
            budget = max_batched - decode
            budget = budget if budget > 1.0 else 1.0
            # Work that fits in one step is one step, which is what the division and ceil would give.
            prefill_steps = 1 if work <= budget else ceil(work / budget)
            steps = (prefill_steps if prefill_steps > 1 else 1) + wait
            decode_steps = steps * decode
            context_steps = steps * context
            # The float start skips sum()'s int path; the sum is the same (`linear`'s, r * 1.0 being r).
            ttft = sum((a * work, o * steps, s * decode_steps, t * context_steps, r), 0.0)
            charges = charge + rate * ttft
            if local:
                charges += decode_steps / steps if steps else 0.0
            ttfts.append(ttft)
            costs.append(ttft + charges * a * own)
            if features is not None:
                features.append((work, steps, decode_steps, context_steps, 1.0))
        return ttfts, costs

    def _features(self, endpoint: Endpoint, own: int, need: int, now: float) -> Features:
        """The model's features of this request's TTFT on the endpoint (`model.ttft_features`)."""
        features: list[Features] = []
        self._predict([endpoint], [endpoint.id], [own], need, now, 0.0, features=features)
        return features[0]

    @staticmethod
    def _uncached(info: PrefixMatchInfo | None, endpoint_id: str, prompt: int) -> int:
        return info.uncached_tokens(endpoint_id) if info is not None else prompt

    def _arrival_rate(self, now: float) -> float:
        return self._rate * math.exp(-(now - self._rate_at) / _RATE_WINDOW_S) if now > self._rate_at else self._rate

    def _count_arrival(self, now: float) -> None:
        self._rate = self._arrival_rate(now) + 1.0 / _RATE_WINDOW_S
        self._rate_at = max(now, self._rate_at)

    def _expected_output(self, request: LLMRequest) -> int:
        body = request.body
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        mean = round(self._mean_output)
        return min(limit, mean) if isinstance(limit, int) and limit > 0 else mean

    # -- accounting ------------------------------------------------------------------------------------------

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        profile = self._p.profile_name or result.primary_profile
        profile_result = result.profile_results.get(profile)
        target = profile_result.primary if profile_result is not None else None
        if target is None:
            return
        info = state.read(self._match_key)
        prompt = _prompt_tokens(info, request)
        # A decode target prefills nothing only when another profile picked where the prompt is computed.
        remote = self._p.remote_prefill and any(
            name != profile and r.primary is not None and r.primary != target
            for name, r in result.profile_results.items()
        )
        own = 0 if remote else self._uncached(info, target.id, prompt)
        now = self._clock()
        output = self._expected_output(request)
        flight = Flight(
            endpoint_id=target.id,
            own_tokens=own,
            context_tokens=prompt + output // 2,
            kv_tokens=own + output,
            features=self._features(target, own, prompt + output, now),
            scheduled_at=now,
            learn=self._p.learning,
            learn_ttft=not remote,
            last_chunk_at=now,
        )
        self.loads.charge(flight)
        state.write(self._flight_key, flight)
        self._mean_own += _MEAN_ALPHA * (own - self._mean_own)
        self._count_arrival(now)

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        flight = state.read(self._flight_key)
        if flight is None or flight.done:
            return None
        return [flight.endpoint_id, flight.own_tokens, flight.context_tokens, flight.kv_tokens]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        endpoint_id, own, context, kv_tokens = fields(shared, str, int, int, int)
        if own < 0 or context < 0 or kv_tokens < 0:
            raise ValueError("negative token counts")
        now = self._clock()
        flight = Flight(endpoint_id, own, context, kv_tokens, (0.0, 0.0, 0.0, 0.0, 0.0), now, learn=False)
        self._count_arrival(now)
        self.loads.charge(flight)
        state.write(self._flight_key, flight)

    def on_response_headers(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo
    ) -> None:
        flight = state.read(self._flight_key)
        if flight is not None and self._p.profile_name is None:
            self.loads.move(flight, endpoint.id, self._clock())

    def on_response_chunk(
        self,
        state: CycleState,
        request: LLMRequest,
        endpoint: Endpoint,
        response: ResponseInfo,
        new_tokens: int,
    ) -> None:
        flight = state.read(self._flight_key)
        if flight is None or flight.done or new_tokens <= 0:
            return
        now = self._clock()
        if not flight.decoding:
            if flight.learn and flight.learn_ttft:
                self.learner.observe(flight.endpoint_id, flight.features, now - flight.scheduled_at)
            if self._p.profile_name is not None:  # a prefill target: its part ends with the prefill
                self.loads.complete(flight, now)
                return
            self.loads.first_token(flight, now)
        elif flight.learn and not self._prefill_possible(endpoint):
            load = self.loads.get(flight.endpoint_id)
            features = step_features(0.0, load.decoding, load.context_tokens)
            self.learner.observe(flight.endpoint_id, features, (now - flight.last_chunk_at) / new_tokens)
        flight.last_chunk_at = now

    def _prefill_possible(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's last steps may have computed prompt tokens: then an inter-token interval says
        nothing certain about the decode costs (how many prompt tokens it computed is unknown)."""
        metrics = endpoint.metrics
        return self.loads.get(endpoint.id).prefilling > 0 or (not metrics.stale and metrics.waiting > 0)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        flight = state.read(self._flight_key)
        if flight is None or flight.done:
            return
        self.loads.complete(flight, self._clock())
        if flight.learn and response.output_tokens > 0:
            self._mean_output += _MEAN_ALPHA * (response.output_tokens - self._mean_output)

    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        for endpoint_id in endpoint_ids:
            self.learner.forget(endpoint_id)

    @property
    def profile_name(self) -> str | None:
        """The profile whose pick this scorer charges (None: the primary profile)."""
        return self._p.profile_name

    @property
    def predicts_whole_ttft(self) -> bool:
        """Whether `LatencyPrediction.ttft` is the request's whole TTFT: not for a P/D prefill or decode part."""
        return self._p.profile_name is None and not self._p.remote_prefill

    def load(self, endpoint_id: str) -> EndpointLoad:
        return self.loads.get(endpoint_id)


def _prompt_tokens(info: PrefixMatchInfo | None, request: LLMRequest) -> int:
    """The prompt's tokens: the prefix plugin's count, else estimated from its characters."""
    return info.prompt_tokens if info is not None else estimate_tokens(len(request.prompt))
