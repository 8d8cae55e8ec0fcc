from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    DisaggregationPlan,
    Endpoint,
    Filter,
    LLMRequest,
    Picker,
    ProfileResult,
    Role,
    SchedulingProfile,
    ScoredEndpoint,
)
from kvroute.router.framework.plugins import NoEndpointsError, NoParams
from kvroute.router.plugins.handlers.pd import PDProfileHandler
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer
from kvroute.router.scheduling import Scheduler

DECODE = Endpoint.create("10.0.0.1", 8000, labels={"llm-d.ai/role": "decode"})
PREFILL = Endpoint.create("10.0.0.2", 8001, labels={"llm-d.ai/role": "prefill"})
PROMPT = "x" * 1000  # 250 tokens


def request(prompt: str = PROMPT, cache_hit_threshold: float | None = None) -> LLMRequest:
    return LLMRequest(
        request_id="r",
        model="m",
        api=ApiKind.COMPLETIONS,
        prompt=prompt,
        body={},
        headers={},
        cache_hit_threshold=cache_hit_threshold,
    )


class FirstPicker(Picker):
    type_name = "first-picker"

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        return [s.endpoint for s in sorted(scored, key=lambda s: -s.score)[:1]]


def profile(name: str) -> SchedulingProfile:
    return SchedulingProfile(name, (), (), FirstPicker("first", NoParams()))


PROFILES = {"decode": profile("decode"), "prefill": profile("prefill")}


def handler(**params: object) -> PDProfileHandler:
    return PDProfileHandler("pd-profile-handler", PDProfileHandler.Params.model_validate(params))


def with_match(matched_blocks: int | None) -> CycleState:
    state = CycleState()
    if matched_blocks is not None:
        info = PrefixMatchInfo({DECODE.id: matched_blocks}, 16, 64, len(PROMPT))
        state.write(prefix_match_key("prefix-cache-scorer"), info)
    return state


def decide(h: PDProfileHandler, state: CycleState, req: LLMRequest | None = None) -> list[str]:
    """Drive the handler like the scheduler and return the profiles it ran, in order."""
    req = req or request()
    picks = {DECODE.id: ProfileResult((DECODE,)), PREFILL.id: ProfileResult((PREFILL,))}
    results: dict[str, ProfileResult] = {}
    while chosen := h.pick(state, req, PROFILES, results):
        for name in chosen:
            results[name] = picks[DECODE.id] if name == "decode" else picks[PREFILL.id]
    return list(results)


def test_threshold_zero_always_disaggregates() -> None:
    state = with_match(16)  # the whole prompt cached: 0 uncached tokens >= 0
    assert decide(handler(), state) == ["decode", "prefill"]
    result = handler().process_results(
        state, request(), {"decode": ProfileResult((DECODE,)), "prefill": ProfileResult((PREFILL,))}
    )
    assert result.primary_profile == "decode"
    assert result.endpoints == (DECODE,)
    assert result.headers == {}
    assert result.disaggregation == DisaggregationPlan("prefill-first", DECODE, PREFILL, None)
    assert result.disaggregation.prefill_host_port == "10.0.0.2:8001"


@pytest.mark.parametrize(
    ("matched", "threshold", "profiles"),
    [
        (3, 100, ["decode", "prefill"]),  # ceil((1000 - 192) / 4) = 202 uncached >= 100
        (13, 100, ["decode"]),  # ceil((1000 - 832) / 4) = 42 < 100
        (13, 42, ["decode", "prefill"]),  # equal to the threshold: prefill
        (None, 250, ["decode", "prefill"]),  # no match info: all 250 tokens uncached
        (None, 251, ["decode"]),
    ],
)
def test_prefill_runs_when_uncached_tokens_reach_the_threshold(
    matched: int | None, threshold: int, profiles: list[str]
) -> None:
    assert decide(handler(threshold=threshold), with_match(matched)) == profiles


def test_decode_only_has_no_plan() -> None:
    state = with_match(13)
    result = handler(threshold=100).process_results(state, request(), {"decode": ProfileResult((DECODE,))})
    assert (result.primary_profile, result.endpoints, result.disaggregation) == ("decode", (DECODE,), None)


def test_an_empty_prefill_profile_falls_back_to_decode_only() -> None:
    state = CycleState()
    results = {"decode": ProfileResult((DECODE,)), "prefill": ProfileResult(())}
    result = handler().process_results(state, request(), results)
    assert (result.endpoints, result.disaggregation) == ((DECODE,), None)


def test_prefill_on_the_decode_endpoint_itself_is_decode_only() -> None:
    results = {"decode": ProfileResult((DECODE,)), "prefill": ProfileResult((DECODE,))}
    assert handler().process_results(CycleState(), request(), results).disaggregation is None


def test_no_prefill_profile_configured_means_decode_only() -> None:
    h = handler()
    decode_only = {"decode": PROFILES["decode"]}
    assert h.pick(CycleState(), request(), decode_only, {}) == decode_only
    assert h.pick(CycleState(), request(), decode_only, {"decode": ProfileResult((DECODE,))}) == {}


def test_no_decode_endpoint_is_an_error() -> None:
    h = handler()
    assert h.pick(CycleState(), request(), PROFILES, {"decode": ProfileResult(())}) == {}
    with pytest.raises(NoEndpointsError, match="'decode' found no endpoint"):
        h.process_results(CycleState(), request(), {"decode": ProfileResult(())})


def test_missing_decode_profile_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no profile named 'dec'"):
        handler(decodeProfile="dec").pick(CycleState(), request(), PROFILES, {})


def test_decode_first_carries_the_cache_hit_threshold() -> None:
    results = {"decode": ProfileResult((DECODE,)), "prefill": ProfileResult((PREFILL,))}
    result = handler(mode="decode-first").process_results(CycleState(), request(), results)
    assert result.endpoints == (DECODE,)
    assert result.disaggregation == DisaggregationPlan("decode-first", DECODE, PREFILL, 0.8)
    own = handler(mode="decode-first", cacheHitThreshold=0.5).process_results(
        CycleState(), request(cache_hit_threshold=0.3), results
    )
    assert own.disaggregation is not None and own.disaggregation.cache_hit_threshold == 0.3
    configured = handler(mode="decode-first", cacheHitThreshold=0.5).process_results(CycleState(), request(), results)
    assert configured.disaggregation is not None and configured.disaggregation.cache_hit_threshold == 0.5


def test_decode_first_skips_prefill_below_the_threshold_too() -> None:
    assert decide(handler(mode="decode-first", threshold=100), with_match(13)) == ["decode"]


def test_ipv6_prefiller_is_bracketed() -> None:
    plan = DisaggregationPlan("prefill-first", DECODE, Endpoint.create("fd00::2", 8000))
    assert plan.prefill_host_port == "[fd00::2]:8000"


def test_params() -> None:
    params = PDProfileHandler.Params()
    assert (params.threshold, params.decode_profile, params.prefill_profile) == (0, "decode", "prefill")
    assert (params.mode, params.cache_hit_threshold, params.prefix_plugin_name) == (
        "prefill-first",
        0.8,
        "prefix-cache-scorer",
    )
    with pytest.raises(ValidationError):
        PDProfileHandler.Params.model_validate({"mode": "sideways"})
    with pytest.raises(ValidationError):
        PDProfileHandler.Params.model_validate({"cacheHitThreshold": 1.5})


class RoleFilter(Filter):
    type_name = "role-filter"

    def __init__(self, role: Role) -> None:
        super().__init__(f"{role}-filter", NoParams())
        self.role = role

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role == self.role]


def test_the_prefix_scorer_match_on_the_decode_endpoint_drives_the_decision() -> None:
    """Through the scheduler: the decode profile's prefix scorer publishes the match the handler reads."""
    prefix = PrefixCacheScorer("prefix-cache-scorer")
    picker = FirstPicker("first", NoParams())
    profiles = {
        "decode": SchedulingProfile("decode", (RoleFilter(Role.DECODE),), ((prefix, 1.0),), picker),
        "prefill": SchedulingProfile("prefill", (RoleFilter(Role.PREFILL),), ((prefix, 1.0),), picker),
    }
    scheduler = Scheduler(handler(threshold=100), profiles)
    state = CycleState()
    first = scheduler.schedule(request(), [DECODE, PREFILL], state)
    # cold: all 250 tokens to compute on the decode endpoint -> prefill apart
    assert first.disaggregation == DisaggregationPlan("prefill-first", DECODE, PREFILL)
    prefix.pre_request(state, request(), first)
    # the decode endpoint now holds the prompt: 0 uncached tokens < 100 -> decode only
    assert scheduler.schedule(request(), [DECODE, PREFILL]).disaggregation is None
