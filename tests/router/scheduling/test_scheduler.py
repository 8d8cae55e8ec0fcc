from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pytest
from pydantic import BaseModel, ConfigDict

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    Filter,
    LLMRequest,
    Picker,
    ProfileHandler,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
    ScoredEndpoint,
    Scorer,
    StateKey,
)
from kvroute.router.framework.plugins import NoEndpointsError
from kvroute.router.observability import RouterMetrics
from kvroute.router.scheduling import Scheduler, SchedulingError

E1 = Endpoint.create("10.0.0.1", 8000)
E2 = Endpoint.create("10.0.0.2", 8000)
E3 = Endpoint.create("10.0.0.3", 8000)
ALL = [E1, E2, E3]

CALLS: StateKey[list[str]] = StateKey("calls")


def calls(state: CycleState) -> list[str]:
    log = state.read(CALLS)
    if log is None:
        log = []
        state.write(CALLS, log)
    return log


class KeepFilter(Filter):
    type_name = "keep-filter"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        keep: frozenset[str]

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        calls(state).append(f"{self.name}:{','.join(e.id for e in endpoints)}")
        keep = self.params.keep
        return [e for e in endpoints if e.id in keep]


class FixedScorer(Scorer):
    type_name = "fixed-scorer"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        scores: dict[str, float]

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        calls(state).append(f"{self.name}:{','.join(e.id for e in endpoints)}")
        return dict(self.params.scores)


class FirstMaxPicker(Picker):
    """Highest total first, ties in input order; remembers what it was given."""

    type_name = "first-max-picker"

    def __init__(self, name: str = "first-max-picker", params: BaseModel | None = None) -> None:
        super().__init__(name, params or self.Params())
        self.seen: list[ScoredEndpoint] = []

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        self.seen = list(scored)
        return [s.endpoint for s in sorted(scored, key=lambda s: -s.score)]


class SingleHandler(ProfileHandler):
    type_name = "single-handler"

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        return {} if results else dict(profiles)

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        (name,) = results
        if not results[name].endpoints:
            raise NoEndpointsError("nothing eligible")
        return SchedulingResult(dict(results), name)


class DecodeThenPrefillHandler(ProfileHandler):
    """Runs `decode`, then `prefill` only when decode picked an endpoint outside `params.warm`."""

    type_name = "decode-then-prefill-handler"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        warm: frozenset[str] = frozenset()

    def __init__(self, name: str, params: BaseModel) -> None:
        super().__init__(name, params)
        self.rounds: list[list[str]] = []

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        self.rounds.append(sorted(results))
        if not results:
            return {"decode": profiles["decode"]}
        decode = results["decode"].primary
        if "prefill" in results or decode is None or decode.id in self.params.warm:
            return {}
        return {"prefill": profiles["prefill"]}

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        prefill = results.get("prefill")
        headers = {"x-prefiller-host-port": prefill.primary.id} if prefill and prefill.primary else {}
        return SchedulingResult(dict(results), "decode", headers)


class RepeatingHandler(SingleHandler):
    type_name = "repeating-handler"

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        return dict(profiles)


class InventingHandler(SingleHandler):
    """Never stops: makes up a new profile name every round."""

    type_name = "inventing-handler"

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        return {f"p{len(results)}": profiles["default"]}


def keep(name: str, *ids: str) -> KeepFilter:
    return KeepFilter(name, KeepFilter.Params(keep=frozenset(ids)))


def fixed(name: str, **scores: float) -> FixedScorer:
    return FixedScorer(name, FixedScorer.Params(scores={f"10.0.0.{k[1:]}:8000": v for k, v in scores.items()}))


def handler(cls: type[ProfileHandler] = SingleHandler) -> ProfileHandler:
    return cls(cls.type_name, cls.Params())


def request() -> LLMRequest:
    return LLMRequest("r1", "m", ApiKind.COMPLETIONS, "hello", {}, {})


def test_total_is_the_weighted_sum_of_clamped_scores() -> None:
    a = fixed("a", e1=1.7, e2=0.5, e3=-0.2)
    b = fixed("b", e1=0.1, e2=math.nan, e3=0.6)
    picker = FirstMaxPicker()
    profile = SchedulingProfile("default", (), ((a, 2.0), (b, 3.0)), picker)

    result = Scheduler(handler(), {"default": profile}).schedule(request(), ALL)

    # e1 = 2*min(1.7, 1) + 3*0.1 = 2.3; e2 = 2*0.5 + 3*0 (NaN) = 1.0; e3 = 2*0 (negative) + 3*0.6 = 1.8
    assert [(s.endpoint.id, round(s.score, 9)) for s in picker.seen] == [
        ("10.0.0.1:8000", 2.3),
        ("10.0.0.2:8000", 1.0),
        ("10.0.0.3:8000", 1.8),
    ]
    assert [e.id for e in result.endpoints] == ["10.0.0.1:8000", "10.0.0.3:8000", "10.0.0.2:8000"]
    assert result.primary_profile == "default"


def test_totals_are_the_clamped_weighted_scores_added_in_profile_order_to_the_last_bit() -> None:
    rng = random.Random(3)
    pool = [Endpoint.create(f"10.0.1.{n}", 8000) for n in range(1, 40)]
    for _ in range(40):
        scorers = []
        for k in range(rng.randint(1, 4)):
            scores = {
                e.id: rng.choice([rng.random(), rng.random(), 0.0, 1.0, -0.3, 1.6, math.nan, math.inf])
                for e in pool
                if rng.random() < 0.9  # the others are missing: 0
            }
            weight = rng.choice([0.0, 0.1, 0.5, 1.0, 3.0, rng.uniform(0, 5)])
            scorers.append((FixedScorer(f"s{k}", FixedScorer.Params(scores=scores)), weight))
        picker = FirstMaxPicker()
        profile = SchedulingProfile("default", (), tuple(scorers), picker)
        Scheduler(handler(), {"default": profile}).schedule(request(), pool)

        expected = []
        for e in pool:
            total = 0.0
            for scorer, weight in scorers:
                score = scorer.params.scores.get(e.id, 0.0)
                if score > 0.0:
                    total += weight * min(score, 1.0)
            expected.append(total)
        assert [s.endpoint for s in picker.seen] == pool
        assert [s.score for s in picker.seen] == expected


def test_missing_endpoint_scores_zero_and_picker_sees_candidates_in_order() -> None:
    only_e3 = fixed("only-e3", e3=0.25)
    picker = FirstMaxPicker()
    profile = SchedulingProfile("default", (), ((only_e3, 4.0),), picker)

    Scheduler(handler(), {"default": profile}).schedule(request(), [E3, E1, E2])

    assert [(s.endpoint, s.score) for s in picker.seen] == [(E3, 1.0), (E1, 0.0), (E2, 0.0)]


def test_filters_run_in_order_each_on_the_previous_output() -> None:
    state = CycleState()
    profile = SchedulingProfile(
        "default",
        (keep("f1", E1.id, E2.id), keep("f2", E2.id, E3.id)),
        ((fixed("s", e2=0.5), 1.0),),
        FirstMaxPicker(),
    )

    result = Scheduler(handler(), {"default": profile}).schedule(request(), ALL, state)

    assert state.require(CALLS) == [
        "f1:10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000",
        "f2:10.0.0.1:8000,10.0.0.2:8000",
        "s:10.0.0.2:8000",
    ]
    assert result.endpoints == (E2,)


def test_empty_filter_result_ends_the_profile_without_scoring() -> None:
    state = CycleState()
    picker = FirstMaxPicker()
    profile = SchedulingProfile("default", (keep("none"), keep("never")), ((fixed("s", e1=1.0), 1.0),), picker)

    with pytest.raises(NoEndpointsError, match="nothing eligible"):
        Scheduler(handler(), {"default": profile}).schedule(request(), ALL, state)

    assert state.require(CALLS) == ["none:10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000"]
    assert picker.seen == []


def pd_profiles() -> dict[str, SchedulingProfile]:
    return {
        "decode": SchedulingProfile("decode", (keep("decode-filter", E1.id, E2.id),), (), FirstMaxPicker()),
        "prefill": SchedulingProfile("prefill", (keep("prefill-filter", E3.id),), (), FirstMaxPicker()),
    }


def test_multi_profile_handler_runs_prefill_after_decode_when_the_decode_pick_is_cold() -> None:
    pd = DecodeThenPrefillHandler("pd", DecodeThenPrefillHandler.Params())

    result = Scheduler(pd, pd_profiles()).schedule(request(), ALL)

    assert pd.rounds == [[], ["decode"], ["decode", "prefill"]]
    assert result.endpoints == (E1, E2)
    assert result.profile_results["prefill"].endpoints == (E3,)
    assert result.headers == {"x-prefiller-host-port": "10.0.0.3:8000"}


def test_multi_profile_handler_skips_prefill_when_the_decode_pick_is_warm() -> None:
    pd = DecodeThenPrefillHandler("pd", DecodeThenPrefillHandler.Params(warm=frozenset({E1.id})))

    result = Scheduler(pd, pd_profiles()).schedule(request(), ALL)

    assert pd.rounds == [[], ["decode"]]
    assert set(result.profile_results) == {"decode"}
    assert result.headers == {}


def test_handler_picking_a_profile_twice_is_an_error() -> None:
    profile = SchedulingProfile("default", (), (), FirstMaxPicker())

    with pytest.raises(SchedulingError, match='picked profile "default" twice'):
        Scheduler(handler(RepeatingHandler), {"default": profile}).schedule(request(), ALL)


def test_handler_that_never_stops_is_cut_off() -> None:
    profile = SchedulingProfile("default", (), (), FirstMaxPicker())

    with pytest.raises(SchedulingError, match="still picked profiles after 2 rounds"):
        Scheduler(handler(InventingHandler), {"default": profile}).schedule(request(), ALL)


def test_no_candidates_raises_before_any_plugin_runs() -> None:
    state = CycleState()
    profile = SchedulingProfile("default", (keep("f", E1.id),), (), FirstMaxPicker())

    with pytest.raises(NoEndpointsError):
        Scheduler(handler(), {"default": profile}).schedule(request(), [], state)

    assert CALLS not in state


def test_metrics_record_plugin_latency_decisions_and_errors() -> None:
    metrics = RouterMetrics()
    profile = SchedulingProfile("default", (keep("f", E1.id, E2.id),), ((fixed("s", e2=1.0), 1.0),), FirstMaxPicker())
    scheduler = Scheduler(handler(), {"default": profile}, metrics)

    scheduler.schedule(request(), ALL)
    scheduler.schedule(request(), ALL)
    with pytest.raises(NoEndpointsError):
        scheduler.schedule(request(), [])

    def plugin_count(extension_point: str, plugin_type: str, plugin_name: str) -> float | None:
        return metrics.registry.get_sample_value(
            "kvroute_scheduler_plugin_duration_seconds_count",
            {"extension_point": extension_point, "plugin_type": plugin_type, "plugin_name": plugin_name},
        )

    assert plugin_count("Filter.filter", "keep-filter", "f") == 2
    assert plugin_count("Scorer.score", "fixed-scorer", "s") == 2
    assert plugin_count("Picker.pick", "first-max-picker", "first-max-picker") == 2
    # Each cycle: pick() with no results, then pick() returning nothing.
    assert plugin_count("ProfileHandler.pick", "single-handler", "single-handler") == 4
    assert plugin_count("ProfileHandler.process_results", "single-handler", "single-handler") == 2
    assert metrics.registry.get_sample_value("kvroute_scheduler_duration_seconds_count") == 3
    assert (
        metrics.registry.get_sample_value(
            "kvroute_scheduler_decisions_total", {"endpoint": "10.0.0.2:8000", "profile": "default"}
        )
        == 2
    )
    assert metrics.registry.get_sample_value("kvroute_scheduler_errors_total", {"reason": "no_candidates"}) == 1


def test_metrics_count_handler_errors_by_reason() -> None:
    metrics = RouterMetrics()
    empty = SchedulingProfile("default", (keep("none"),), (), FirstMaxPicker())

    with pytest.raises(NoEndpointsError):
        Scheduler(handler(), {"default": empty}, metrics).schedule(request(), ALL)
    with pytest.raises(SchedulingError):
        Scheduler(handler(RepeatingHandler), {"default": empty}, metrics).schedule(request(), ALL)

    errors = "kvroute_scheduler_errors_total"
    assert metrics.registry.get_sample_value(errors, {"reason": "no_endpoints"}) == 1
    assert metrics.registry.get_sample_value(errors, {"reason": "handler_loop"}) == 1
