import random
from types import MappingProxyType

import pytest
from pydantic import ValidationError

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.filters.prefix_cache_affinity import PrefixCacheAffinityFilter
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.producers.inflight_load import InFlightLoad, in_flight_load_key

A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
ALL = [A, B, C]
REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="p", body={}, headers={})


def affinity(rng: random.Random | None = None, **params: object) -> PrefixCacheAffinityFilter:
    return PrefixCacheAffinityFilter(
        "prefix-cache-affinity-filter", PrefixCacheAffinityFilter.Params.model_validate(params), rng=rng
    )


def state(matched: dict[Endpoint, int], total: int = 100, in_flight: dict[Endpoint, int] | None = None) -> CycleState:
    s = CycleState()
    info = PrefixMatchInfo({e.id: n for e, n in matched.items()}, total, 64, total * 64)
    s.write(prefix_match_key("approx-prefix-cache-producer"), info)
    if in_flight is not None:
        tokens = MappingProxyType({e.id: t for e, t in in_flight.items()})
        s.write(
            in_flight_load_key("inflight-load-producer"),
            InFlightLoad(tokens, MappingProxyType({}), prefix_match_key("approx-prefix-cache-producer")),
        )
    return s


def kept(f: PrefixCacheAffinityFilter, s: CycleState, endpoints: list[Endpoint] = ALL) -> list[Endpoint]:
    return f.filter(s, REQUEST, endpoints)


def test_keeps_the_endpoints_whose_prefix_score_reaches_the_threshold() -> None:
    f = affinity()
    assert f.params.affinity_threshold == 0.80  # type: ignore[attr-defined]
    # scores 0.90, 0.80, 0.79: 0.8 is sticky (>=), 0.79 is not
    assert kept(f, state({A: 90, B: 80, C: 79}, in_flight={})) == [A, B]
    assert kept(affinity(affinityThreshold=0.95), state({A: 96, B: 94}, in_flight={})) == [A]


def test_keeps_everyone_when_no_endpoint_is_sticky_or_nothing_was_published() -> None:
    f = affinity()
    assert kept(f, state({A: 79, B: 50}, in_flight={})) == ALL
    assert kept(f, state({}, total=0, in_flight={})) == ALL  # an empty prompt
    assert kept(f, CycleState()) == ALL
    assert kept(f, state({A: 100}), [A]) == [A]  # a single candidate stays
    assert kept(affinity(affinityThreshold=0), state({A: 100}, in_flight={})) == ALL


def test_the_ttft_gate_breaks_stickiness_when_the_sticky_endpoints_are_saturated() -> None:
    f = affinity()  # 18,000 ms at 15,928 tokens/s
    # best sticky B at 290,000 tokens, best other C at 0: 290,000 / 15,928 * 1000 = 18,207 ms > 18,000
    assert kept(f, state({A: 90, B: 85, C: 10}, in_flight={A: 300_000, B: 290_000})) == ALL
    # 286,000 tokens: 17,956 ms, within the penalty: stay sticky
    assert kept(f, state({A: 90, B: 85, C: 10}, in_flight={A: 300_000, B: 286_000})) == [A, B]
    # what counts is the gap: the other endpoint's own load is subtracted
    assert kept(f, state({A: 90, C: 10}, in_flight={A: 300_000, C: 100_000}), [A, C]) == [A]
    assert kept(f, state({A: 90, C: 10}, in_flight={A: 300_000, C: 100_000})) == ALL  # B is idle


def test_the_token_gate_of_the_optimized_baseline() -> None:
    f = affinity(maxTTFTPenaltyMs=0, maxTokensInFlightPenalty=286_720)
    assert kept(f, state({A: 90}, in_flight={A: 286_720})) == [A]
    assert kept(f, state({A: 90}, in_flight={A: 286_721})) == ALL
    # the gap to the least loaded other endpoint: 300,000 - 13,280 = 286,720, not above the penalty
    assert kept(f, state({A: 90}, in_flight={A: 300_000, B: 20_000, C: 13_280})) == [A]


def test_the_load_gate_without_its_signal_keeps_everyone_and_with_both_gates_off_never_runs() -> None:
    assert kept(affinity(), state({A: 90})) == ALL
    assert kept(affinity(maxTTFTPenaltyMs=0), state({A: 90})) == [A]
    assert kept(affinity(maxTTFTPenaltyMs=0), state({A: 90}, in_flight={A: 10**9})) == [A]


def test_exploration_keeps_everyone_with_the_configured_probability_drawn_from_the_injected_random() -> None:
    s = state({A: 100}, in_flight={})
    assert kept(affinity(explorationProbability=1.0), s) == ALL
    assert kept(affinity(explorationProbability=0.0), s) == [A]

    def explored(seed: int) -> list[bool]:
        f = affinity(random.Random(seed), explorationProbability=0.25)
        return [len(kept(f, s)) == 3 for _ in range(400)]

    assert explored(1) == explored(1)
    assert 70 <= sum(explored(1)) <= 130


def test_parameters_are_validated() -> None:
    for bad in (
        {"affinityThreshold": 1.5},
        {"explorationProbability": -0.1},
        {"maxTTFTPenaltyMs": -1},
        {"ttftSource": "latencyPredictor"},
        {"peakPrefillThroughput": 0},
        {"prefillCalibrationFile": "/etc/x"},
    ):
        with pytest.raises(ValidationError):
            PrefixCacheAffinityFilter.Params.model_validate(bad)
    PrefixCacheAffinityFilter.Params.model_validate({"peakPrefillThroughput": 0, "maxTTFTPenaltyMs": 0})
