"""`predicted-latency-scorer` in a P/D pool: `LatencyPrediction.local_cost`, and what a `remotePrefill` scorer
charges and learns for a request that was disaggregated or kept whole."""

import random
from typing import Any

import pytest

from kvroute.router.config.loader import load_config
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    ProfileResult,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.latency.load import EndpointLoad
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.predicted_latency import (
    LatencyPrediction,
    PredictedLatencyScorer,
    prediction_key,
)

# Both scorers' prior: 40 us per prompt token, 5 ms per step, 100 us per decoding sequence, 0.1 us per context
# token, 1 ms per request, 4,096 tokens per step; a capacity charge of 3 (3 * a * own; the arrival charge is set
# by `Router`, 0 unless a test states it).
PRIOR = (
    "prefillTokensPerSecond: 25000, stepOverheadSeconds: 0.005, decodeSecondsPerSequence: 0.0001, "
    "decodeSecondsPerContextToken: 1.0e-7, maxBatchedTokens: 4096, capacityCharge: 3.0"
)
A = 4e-5

PD_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: decode-filter
  - type: prefill-filter
  - type: approx-prefix-cache-producer
  - name: decode-latency
    type: predicted-latency-scorer
    parameters: {prefixPluginName: approx-prefix-cache-producer, remotePrefill: true, %(prior)s, %(arrival)s}
  - name: prefill-latency
    type: predicted-latency-scorer
    parameters: {prefixPluginName: approx-prefix-cache-producer, profileName: prefill, %(prior)s, %(arrival)s}
  - {name: decode-picker, type: max-score-picker}
  - {name: prefill-picker, type: max-score-picker}
  - type: pd-profile-handler
    parameters: {decider: predicted-latency, prefixPluginName: approx-prefix-cache-producer}
schedulingProfiles:
  - {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: decode-latency}, {pluginRef: decode-picker}]}
  - {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefill-latency}, {pluginRef: prefill-picker}]}
"""


def decoder(n: int = 1, **metrics: Any) -> Endpoint:
    """A decode endpoint on 10.0.1.n; with metrics, a fresh scrape of them (else the default stale one)."""
    created = Endpoint.create(f"10.0.1.{n}", 8000, labels={"llm-d.ai/role": "decode"})
    if metrics:
        created.metrics = EndpointMetrics(scraped_at=1.0, stale=False, **metrics)
    return created


def prefiller() -> Endpoint:
    return Endpoint.create("10.0.2.1", 8000, labels={"llm-d.ai/role": "prefill"})


def request(tokens: int, tag: str, max_tokens: int = 10) -> LLMRequest:
    """A prompt of `tokens` estimated tokens (4 characters each) that shares no block with other tags."""
    head = f"<{tag}>"
    prompt = head + "x" * (4 * tokens - len(head))
    body = {"prompt": prompt, "max_tokens": max_tokens}
    return LLMRequest(request_id=tag, model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body=body, headers={})


def ok(output_tokens: int) -> ResponseInfo:
    return ResponseInfo(status=200, output_tokens=output_tokens)


class Router:
    """The P/D configuration loaded as the router loads it, on a clock the test advances by hand."""

    def __init__(self, arrival_charge: float = 0.0) -> None:
        self.now = 100.0
        text = PD_CONFIG % {"prior": PRIOR, "arrival": f"arrivalCharge: {arrival_charge}"}
        self.config = load_config(text, REGISTRY, rng=random.Random(0), clock=lambda: self.now)
        decode, prefill = self.config.plugins["decode-latency"], self.config.plugins["prefill-latency"]
        assert isinstance(decode, PredictedLatencyScorer) and isinstance(prefill, PredictedLatencyScorer)
        self.decode, self.prefill = decode, prefill

    def send(self, llm_request: LLMRequest, endpoints: list[Endpoint]) -> tuple[CycleState, SchedulingResult]:
        """Schedules the request and runs every pre-request hook, as the Director does."""
        state = CycleState()
        result = self.config.scheduler.schedule(llm_request, endpoints, state)
        self.pre_request(state, llm_request, result)
        return state, result

    def pre_request(self, state: CycleState, llm_request: LLMRequest, result: SchedulingResult) -> None:
        for hook in self.config.pre_request:
            hook.pre_request(state, llm_request, result)

    def predict(self, llm_request: LLMRequest, endpoints: list[Endpoint]) -> LatencyPrediction:
        """The decode scorer's published prediction, without sending the request."""
        state = CycleState()
        self.config.scheduler.schedule(llm_request, endpoints, state)
        return state.require(prediction_key("decode-latency"))

    def serve(
        self,
        state: CycleState,
        llm_request: LLMRequest,
        target: Endpoint,
        ttft: float,
        steps: list[float],
        complete: bool = True,
    ) -> None:
        """The response from `target`: the first token after `ttft` seconds, then one per element of `steps`."""
        hooks = self.config.response_hooks
        for hook in hooks:
            hook.on_response_headers(state, llm_request, target, ok(0))
        self.now += ttft
        for hook in hooks:
            hook.on_response_chunk(state, llm_request, target, ok(1), 1)
        for i, step in enumerate(steps, start=2):
            self.now += step
            for hook in hooks:
                hook.on_response_chunk(state, llm_request, target, ok(i), 1)
        if complete:
            for hook in hooks:
                hook.on_response_complete(state, llm_request, target, ok(1 + len(steps)))


def result_of(**profiles: tuple[Endpoint, ...]) -> SchedulingResult:
    return SchedulingResult({name: ProfileResult(picked) for name, picked in profiles.items()}, "decode")


# -- local_cost ----------------------------------------------------------------------------------------------


def test_local_cost_adds_the_prefill_on_the_endpoint_itself_and_the_delay_to_its_decode_batch() -> None:
    router = Router()
    busy = decoder(1, running=8, kv_usage=0.25, num_gpu_blocks=1000, block_size=16)  # 4,000 of 16,000 tokens
    idle = decoder(2)
    state, _ = router.send(request(4000, "cold"), [busy, idle, prefiller()])

    prediction = state.require(prediction_key("decode-latency"))
    # remotePrefill prices no prefill: one step beside the decodes, no charge
    # busy: 5 ms + 8 * 0.1 ms + 4,000 * 0.1 us + 1 ms; idle: 5 + 1 ms
    assert prediction.ttft == pytest.approx({busy.id: 0.0072, idle.id: 0.006})
    assert prediction.cost == prediction.ttft
    # local: the 4,000 tokens in that step (160 ms), + (3 + decoding) * 40 us * 4,000
    # busy: 0.1672 + 11 * 0.16 = 1.9272; idle: 0.166 + 3 * 0.16 = 0.646
    assert prediction.local_cost == pytest.approx({busy.id: 1.9272, idle.id: 0.646})


def test_local_cost_counts_the_tracked_decoding_sequences_when_more_than_scraped() -> None:
    router = Router()
    target, prefill = decoder(1, running=1), prefiller()
    for i in range(3):  # three 100-token requests kept whole on it, decoding over 100 + 10 // 2 tokens each
        llm_request = request(100, f"decoding {i}")
        state = CycleState()
        router.pre_request(state, llm_request, result_of(decode=(target,)))
        router.serve(state, llm_request, target, 0.0, [], complete=False)  # no time passes: nothing is learned
    assert router.decode.load(target.id) == EndpointLoad(decoding=3, context_tokens=315, kv_tokens=330)
    prediction = router.predict(request(4000, "cold"), [target, prefill])

    # decode = max(3 tracked, 1 scraped), context 315: ttft_d = 5 + 0.3 + 0.0315 + 1 ms
    assert prediction.ttft == pytest.approx({target.id: 0.0063315})
    # local = 0.16 + 0.0063315 + (3 + 3 decoding) * 40 us * 4,000
    assert prediction.local_cost == pytest.approx({target.id: 1.1263315})


def test_local_cost_carries_the_arrival_term_of_the_local_ttft() -> None:
    router = Router(arrival_charge=1.0)
    target, elsewhere, prefill = decoder(1), decoder(2), prefiller()
    router.pre_request(CycleState(), request(100, "before"), result_of(decode=(elsewhere,)))  # 1 request / s
    prediction = router.predict(request(4000, "cold"), [target, prefill])

    assert prediction.cost == pytest.approx({target.id: 0.006})  # own = 0: nothing to charge
    # behind = 1.0 * 1 / s / 1 candidate * 0.166 s: local = 0.166 + (3 + 0.166 + 0) * 40 us * 4,000
    assert prediction.local_cost == pytest.approx({target.id: 0.67256})


def test_without_remote_prefill_local_cost_is_the_cost() -> None:
    router = Router()
    prefill = prefiller()
    state, _ = router.send(request(4000, "cold"), [decoder(1), prefill])

    on_prefill = state.require(prediction_key("prefill-latency"))
    assert on_prefill.cost == pytest.approx({prefill.id: 0.646})  # 0.166 + 3 * 40 us * 4,000
    assert on_prefill.local_cost == on_prefill.cost


# -- what a remotePrefill scorer charges and learns --------------------------------------------------------


@pytest.mark.parametrize(
    ("profiles", "own"),
    [
        ({"prefill": "other"}, 0),  # disaggregated: the prompt is computed on the prefill endpoint
        ({"prefill": "same"}, 4000),  # the prefill profile picked the decode endpoint itself
        ({"prefill": "none"}, 4000),  # the prefill profile found no endpoint
        ({}, 4000),  # no prefill profile in the result (dropped by the handler)
    ],
)
def test_the_decode_target_is_charged_no_prompt_only_when_another_profile_picked_another_endpoint(
    profiles: dict[str, str], own: int
) -> None:
    router = Router()
    target, prefill = decoder(1), prefiller()
    picked = {"other": (prefill,), "same": (target,), "none": ()}
    result = result_of(decode=(target,), **{name: picked[which] for name, which in profiles.items()})
    router.pre_request(CycleState(), request(4000, "a"), result)  # no match info: the whole prompt is uncached

    assert router.decode.load(target.id) == EndpointLoad(prefill_tokens=own, prefilling=1, kv_tokens=own + 10)


def test_a_disaggregated_request_teaches_inter_token_times_but_not_its_ttft() -> None:
    router = Router()
    target, prefill = decoder(1, running=8), prefiller()
    llm_request = request(4000, "cold")
    state, result = router.send(llm_request, [target, prefill])
    assert result.disaggregation is not None  # remote 0.6642 < local 1.9268
    assert router.decode.load(target.id).prefill_tokens == 0

    router.serve(state, llm_request, target, 0.7, [0.01] * 4, complete=False)
    assert router.decode.learner.observations(target.id) == 4  # the 4 intervals, not the TTFT
    assert router.prefill.learner.observations(prefill.id) == 1  # the prefill endpoint's part ends at the TTFT
    assert len(router.prefill.loads) == 0
    assert router.decode.load(target.id) == EndpointLoad(decoding=1, context_tokens=4005, kv_tokens=10)


def test_a_request_kept_whole_teaches_its_ttft_and_inter_token_times() -> None:
    router = Router()
    target, prefill = decoder(1), prefiller()
    llm_request = request(4000, "cold")
    state, result = router.send(llm_request, [target, prefill])
    assert result.disaggregation is None  # remote 0.6634 >= local 0.646
    assert router.decode.load(target.id).prefill_tokens == 4000

    router.serve(state, llm_request, target, 0.2, [0.01] * 4)
    assert router.decode.learner.observations(target.id) == 5
    assert router.decode.learner.multipliers(target.id) != (1.0, 1.0, 1.0, 1.0, 1.0)
    assert len(router.prefill.learner) == 0
    assert len(router.decode.loads) == len(router.prefill.loads) == 0
