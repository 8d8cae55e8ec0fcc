"""`pd-profile-handler` with `decider: predicted-latency`, through `load_config` and the real scheduler."""

import random
from typing import Any

import pytest
from pydantic import ValidationError

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.workloads import Fleet, FleetSpec
from kvroute.router.config.loader import load_config
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    DisaggregationPlan,
    Endpoint,
    EndpointMetrics,
    LLMRequest,
    ProfileResult,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.handlers.pd import PDProfileHandler
from kvroute.router.plugins.latency.load import EndpointLoad
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.predicted_latency import (
    LatencyPrediction,
    PredictedLatencyScorer,
    prediction_key,
)
from kvroute.simulator.des.harness import WorkloadRequest, simulate

# Both scorers' prior: 40 us per prompt token, 5 ms per step, 100 us per decoding sequence, 0.1 us per context
# token, 1 ms per request, 4,096 tokens per step; a capacity charge of 3 and no arrival term, so the charge is
# 3 * a * own.
PRIOR = (
    "prefillTokensPerSecond: 25000, stepOverheadSeconds: 0.005, decodeSecondsPerSequence: 0.0001, "
    "decodeSecondsPerContextToken: 1.0e-7, maxBatchedTokens: 4096, capacityCharge: 3.0, arrivalCharge: 0"
)


PD_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: decode-filter
  - type: prefill-filter
  - type: approx-prefix-cache-producer
  - name: decode-latency
    type: predicted-latency-scorer
    parameters: {prefixPluginName: approx-prefix-cache-producer, remotePrefill: true%(decode)s}
  - name: prefill-latency
    type: predicted-latency-scorer
    parameters: {prefixPluginName: approx-prefix-cache-producer, profileName: prefill%(prefill)s}
  - {name: decode-picker, type: max-score-picker}
  - {name: prefill-picker, type: max-score-picker}
  - type: pd-profile-handler
    parameters: {decider: %(decider)s, prefixPluginName: approx-prefix-cache-producer%(handler)s}
schedulingProfiles:
  - {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: decode-latency}, {pluginRef: decode-picker}]}
  - {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefill-latency}, {pluginRef: prefill-picker}]}
"""


def pd_config(
    handler: str = "", decode: str = ", " + PRIOR, prefill: str = ", " + PRIOR, decider: str = "predicted-latency"
) -> str:
    """The P/D configuration; `handler`, `decode` and `prefill` add parameters (", name: value") to those plugins."""
    return PD_CONFIG % {"handler": handler, "decode": decode, "prefill": prefill, "decider": decider}


def decoder(**metrics: Any) -> Endpoint:
    """The decode endpoint 10.0.1.1; with metrics, a fresh scrape of them (else the default stale one)."""
    created = Endpoint.create("10.0.1.1", 8000, labels={"llm-d.ai/role": "decode"})
    if metrics:
        created.metrics = EndpointMetrics(scraped_at=1.0, stale=False, **metrics)
    return created


def prefiller(**metrics: Any) -> Endpoint:
    created = Endpoint.create("10.0.2.1", 8000, labels={"llm-d.ai/role": "prefill"})
    if metrics:
        created.metrics = EndpointMetrics(scraped_at=1.0, stale=False, **metrics)
    return created


def request(prompt: str, request_id: str = "r") -> LLMRequest:
    body = {"prompt": prompt, "max_tokens": 10}
    return LLMRequest(request_id=request_id, model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body=body, headers={})


COLD = "<cold>" + "x" * (16_000 - 6)  # 4,000 tokens, 250 blocks of 64 characters
SHARED = "<system>" + "s" * (15_360 - 8)  # 240 blocks


class Router:
    """A P/D configuration loaded as the router loads it, on a clock the test advances by hand."""

    def __init__(self, **text: str) -> None:
        self.now = 100.0
        self.config = load_config(pd_config(**text), REGISTRY, rng=random.Random(0), clock=lambda: self.now)
        decode, prefill = self.config.plugins["decode-latency"], self.config.plugins["prefill-latency"]
        assert isinstance(decode, PredictedLatencyScorer) and isinstance(prefill, PredictedLatencyScorer)
        self.decode, self.prefill = decode, prefill

    def send(self, llm_request: LLMRequest, endpoints: list[Endpoint]) -> tuple[CycleState, SchedulingResult]:
        """Schedules the request and runs every pre-request hook, as the Director does."""
        state = CycleState()
        result = self.config.scheduler.schedule(llm_request, endpoints, state)
        for hook in self.config.pre_request:
            hook.pre_request(state, llm_request, result)
        return state, result

    def first_token(self, state: CycleState, llm_request: LLMRequest, target: Endpoint) -> None:
        """The first token at once: no time passes, so nothing is learned."""
        for hook in self.config.response_hooks:
            hook.on_response_chunk(state, llm_request, target, ResponseInfo(status=200, output_tokens=1), 1)


def test_a_long_cold_prompt_is_disaggregated_away_from_a_decode_batch() -> None:
    router = Router()
    decode, prefill = decoder(running=8), prefiller()
    state, result = router.send(request(COLD), [decode, prefill])

    on_decode = state.require(prediction_key("decode-latency"))
    # ttft_d: no prefill of its own, one step beside 8 decodes: 5 + 0.8 + 1 ms
    # local: 4,000 tokens in one step beside them, 0.1668 s, + (3 + 8 decoding) * 40 us * 4,000 = 1.9268 s
    assert on_decode.ttft == on_decode.cost == pytest.approx({decode.id: 0.0068})
    assert on_decode.local_cost == pytest.approx({decode.id: 1.9268})
    # cost_p on the idle prefill endpoint: 0.166 + 3 * 40 us * 4,000
    assert state.require(prediction_key("prefill-latency")).cost == pytest.approx({prefill.id: 0.646})
    # remote = 0.646 + 1 ms + 2.6 us * 4,000 + 0.0068 = 0.6642 < 1.9268
    assert result.disaggregation == DisaggregationPlan("prefill-first", decode, prefill, None)
    assert result.disaggregation.prefill_host_port == "10.0.2.1:8000"
    assert result.endpoints == (decode,)
    # the decode endpoint prefills nothing; the prefill endpoint computes the whole prompt
    assert router.decode.load(decode.id) == EndpointLoad(prefill_tokens=0, prefilling=1, kv_tokens=10)
    assert router.prefill.load(prefill.id) == EndpointLoad(prefill_tokens=4000, prefilling=1, kv_tokens=4010)


def test_the_same_prompt_is_kept_whole_on_an_idle_decode_endpoint() -> None:
    router = Router()
    decode, prefill = decoder(), prefiller()
    state, result = router.send(request(COLD), [decode, prefill])

    # local = 0.166 + 3 * 40 us * 4,000 = 0.646 (nothing decodes there to delay) and cost_p is the same 0.646:
    # remote = 0.646 + 0.001 + 0.0104 + 0.006 = 0.6634 >= 0.646
    assert state.require(prediction_key("decode-latency")).local_cost == pytest.approx({decode.id: 0.646})
    # the prefill profile ran (its prediction is published) and its result was dropped
    assert state.require(prediction_key("prefill-latency")).cost == pytest.approx({prefill.id: 0.646})
    assert result.disaggregation is None
    assert set(result.profile_results) == {"decode"}
    assert router.decode.load(decode.id) == EndpointLoad(prefill_tokens=4000, prefilling=1, kv_tokens=4010)
    assert len(router.prefill.loads) == 0


@pytest.mark.parametrize(
    ("handler", "disaggregated"),
    [
        # break-even transfer time per token: (1.9268 - 0.646 - 0.001 - 0.0068) / 4,000 = 318.25 us
        (", kvTransferSecondsPerToken: 3.1e-4", True),  # remote 1.8938
        (", kvTransferSecondsPerToken: 3.3e-4", False),  # remote 1.9738
        (", kvTransferSecondsPerToken: 1.0e-3", False),  # remote 4.6538
        # break-even setup: 1.9268 - 0.646 - 0.0104 - 0.0068 = 1.2636 s
        (", kvTransferSetupSeconds: 1.2", True),
        (", kvTransferSetupSeconds: 1.3", False),
        (", threshold: 1000000", True),  # the threshold is not this decider's: the prefill profile still runs
    ],
)
def test_the_transfer_costs_decide_against_the_local_cost(handler: str, disaggregated: bool) -> None:
    router = Router(handler=handler)
    decode, prefill = decoder(running=8), prefiller()
    _, result = router.send(request(COLD), [decode, prefill])

    assert (result.disaggregation is not None) is disaggregated
    assert router.decode.load(decode.id).prefill_tokens == (0 if disaggregated else 4000)
    assert router.prefill.load(prefill.id).prefill_tokens == (4000 if disaggregated else 0)


def test_a_prefix_cached_on_the_decode_endpoint_keeps_the_request_whole_beside_a_busy_prefill_endpoint() -> None:
    router = Router()
    decode, busy = decoder(), prefiller(waiting=10)
    first = request(SHARED + "y" * 640, "first")
    state, result = router.send(first, [decode, busy])
    # cost_p: 10 unknown waiting requests at the default mean of 1,024 tokens and 4,000 own: 14,240 tokens in
    # 4 steps, 0.5906 s, + 0.48 s = 1.0706 s against a local 0.646 s: kept whole, recorded on the decode endpoint
    assert state.require(prediction_key("prefill-latency")).cost == pytest.approx({busy.id: 1.0706})
    assert result.disaggregation is None
    router.first_token(state, first, decode)

    second = request(SHARED + "z" * 640, "second")
    state, result = router.send(second, [decode, busy])
    match = state.require(prefix_match_key("approx-prefix-cache-producer"))
    assert (match.matched_blocks.get(decode.id), match.matched_blocks.get(busy.id, 0)) == (240, 0)
    on_decode = state.require(prediction_key("decode-latency"))
    # ttft_d: one step beside the first request decoding over 4,005 tokens: 5 + 0.1 + 0.4005 + 1 ms
    # local: 160 uncached tokens in that step, 0.0129005 s, + (3 + 1 decoding) * 40 us * 160 = 0.0385005 s
    assert on_decode.ttft == pytest.approx({decode.id: 0.0065005})
    assert on_decode.local_cost == pytest.approx({decode.id: 0.0385005})
    # remote = 1.0706 + 0.001 + 2.6 us * 160 + 0.0065005 = 1.0785165: kept whole
    assert state.require(prediction_key("prefill-latency")).cost == pytest.approx({busy.id: 1.0706})
    assert result.disaggregation is None
    assert router.decode.load(decode.id) == EndpointLoad(
        prefill_tokens=160, prefilling=1, decoding=1, context_tokens=4005, kv_tokens=4010 + 170
    )
    assert len(router.prefill.loads) == 0


def test_the_threshold_decider_disaggregates_what_the_latency_decider_keeps_whole() -> None:
    router = Router(decider="threshold")
    decode, prefill = decoder(), prefiller()
    _, result = router.send(request(COLD), [decode, prefill])

    assert result.disaggregation == DisaggregationPlan("prefill-first", decode, prefill, None)  # threshold 0: always
    assert router.prefill.load(prefill.id).prefill_tokens == 4000


@pytest.mark.parametrize("missing", ["decodeLatencyPlugin", "prefillLatencyPlugin"])
def test_a_missing_prediction_disaggregates(missing: str) -> None:
    router = Router(handler=f", {missing}: no-such-scorer")
    decode, prefill = decoder(), prefiller()  # the predictions alone would keep it whole (0.6634 >= 0.646)
    _, result = router.send(request(COLD), [decode, prefill])

    assert result.disaggregation == DisaggregationPlan("prefill-first", decode, prefill, None)
    assert router.decode.load(decode.id).prefill_tokens == 0
    assert router.prefill.load(prefill.id).prefill_tokens == 4000


# -- the formula on hand-set predictions ----------------------------------------------------------------------

DECODE = decoder()
PREFILL = prefiller()
RESULTS = {"decode": ProfileResult((DECODE,)), "prefill": ProfileResult((PREFILL,))}


def predicted(local: float, decode_id: str = DECODE.id, prefill_id: str = PREFILL.id) -> CycleState:
    """The module docstring's example: ttft_d 0.015 s, cost_p 0.120 s, 4,000 uncached tokens on d."""
    state = CycleState()
    state.write(
        prediction_key("decode-latency"), LatencyPrediction({decode_id: 0.015}, {decode_id: 0.015}, {decode_id: local})
    )
    state.write(prediction_key("prefill-latency"), LatencyPrediction({prefill_id: 0.1}, {prefill_id: 0.12}, {}))
    state.write(prefix_match_key("prefix-cache-scorer"), PrefixMatchInfo({}, 250, 64, 16_000))
    return state


def handler(**params: object) -> PDProfileHandler:
    return PDProfileHandler("pd", PDProfileHandler.Params.model_validate({"decider": "predicted-latency", **params}))


@pytest.mark.parametrize(
    ("local", "disaggregated"),
    [
        (0.300, True),  # remote = 0.12 + 0.001 + 0.0104 + 0.015 = 0.1464
        (0.1465, True),
        (0.1463, False),
    ],
)
def test_remote_is_cost_p_plus_setup_plus_transfer_plus_ttft_d(local: float, disaggregated: bool) -> None:
    state = predicted(local)
    result = handler().process_results(state, request(COLD), RESULTS)

    plan = DisaggregationPlan("prefill-first", DECODE, PREFILL, None)
    assert result.disaggregation == (plan if disaggregated else None)
    assert result.endpoints == (DECODE,)
    assert set(result.profile_results) == ({"decode", "prefill"} if disaggregated else {"decode"})


@pytest.mark.parametrize(
    "state",
    [
        predicted(0.01, decode_id="10.0.9.9:8000"),  # no prediction for the chosen decode endpoint
        predicted(0.01, prefill_id="10.0.9.9:8000"),  # nor for the chosen prefill endpoint
    ],
)
def test_a_prediction_without_the_chosen_endpoint_disaggregates(state: CycleState) -> None:
    result = handler().process_results(state, request(COLD), RESULTS)
    assert result.disaggregation == DisaggregationPlan("prefill-first", DECODE, PREFILL, None)


def test_the_decode_first_plan_is_set_only_when_disaggregated() -> None:
    result = handler(mode="decode-first").process_results(predicted(0.300), request(COLD), RESULTS)
    assert result.disaggregation == DisaggregationPlan("decode-first", DECODE, PREFILL, 0.8)
    kept = handler(mode="decode-first").process_results(predicted(0.1463), request(COLD), RESULTS)
    assert kept.disaggregation is None


def test_params() -> None:
    params = PDProfileHandler.Params()
    assert params.decider == "threshold"
    assert (params.decode_latency_plugin, params.prefill_latency_plugin) == ("decode-latency", "prefill-latency")
    assert (params.kv_transfer_seconds_per_token, params.kv_transfer_setup_seconds) == (2.6e-6, 1e-3)
    with pytest.raises(ValidationError):
        PDProfileHandler.Params.model_validate({"decider": "coin-flip"})
    with pytest.raises(ValidationError):
        PDProfileHandler.Params.model_validate({"kvTransferSecondsPerToken": -1.0})
    with pytest.raises(ValidationError):
        PDProfileHandler.Params.model_validate({"decodeLatencyPlugin": ""})


# -- end to end in the discrete-event harness ----------------------------------------------------------------


def workload() -> list[WorkloadRequest]:
    """6 cold 800-token prompts, then 30 questions of 20 tokens after one of 3 shared 600-token system prompts."""
    requests = []
    for i in range(36):
        if i < 6:
            head = f"<cold {i}>"
            tokens = [10_000 * (i + 1) + t for t in range(800)]
            text = head + "c" * (4 * 800 - len(head))
        else:
            group, head, question = i % 3, f"<system {i % 3}>", f"<q {i}>"
            tokens = [1000 * (group + 1) + t for t in range(600)] + [500_000 + 100 * i + t for t in range(20)]
            text = head + "s" * (4 * 600 - len(head)) + question + "q" * (80 - len(question))
        requests.append(WorkloadRequest(f"r{i}", 0.03 * i, text, tokens, 16))
    return requests


def test_a_pd_fleet_runs_to_completion_disaggregating_cold_prompts_and_keeping_warm_ones_whole() -> None:
    fleet = Fleet.from_spec(FleetSpec(engines=4, profile="tiny", prefill_engines=2))
    text = pd_config(decode="", prefill="")  # the scorers' default priors and arrival charge
    policy = SchedulerPolicy(text, fleet, seed=0)
    result = simulate(fleet.profiles, workload(), policy.route, listener=policy, tick_interval=policy.tick_interval)

    assert result.unfinished == 0 and policy.in_flight == 0
    records = {r.request_id: r for r in result.records}
    assert {r.engine for r in records.values()} <= {2, 3}
    disaggregated = {r.request_id for r in records.values() if r.prefill_engine is not None}
    assert {records[i].prefill_engine for i in disaggregated} <= {0, 1}
    assert 0 < len(disaggregated) < len(records)
    # by the last 20, every system prompt is in both decode engines' caches: a few uncached tokens, kept whole
    assert all(f"r{i}" not in disaggregated and records[f"r{i}"].cached_tokens > 0 for i in range(16, 36))
    plugins = policy.config.plugins
    for name in ("decode-latency", "prefill-latency"):
        scorer = plugins[name]
        assert isinstance(scorer, PredictedLatencyScorer)
        assert len(scorer.loads) == 0
