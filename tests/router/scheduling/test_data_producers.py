"""The `DataProducer` extension point: run once per cycle, before the handler picks, with every candidate."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import pytest

from kvroute.router.config import ConfigError
from kvroute.router.config.loader import load_config
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    DataProducer,
    Endpoint,
    Filter,
    LLMRequest,
    ProfileHandler,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
    StateKey,
)
from kvroute.router.framework.plugins import NoParams
from kvroute.router.plugins.pickers.max_score import MaxScorePicker
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.scheduling import Scheduler

E1, E2, E3 = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
LOG: StateKey[list[str]] = StateKey("log")


def log(state: CycleState) -> list[str]:
    entries = state.read(LOG)
    if entries is None:
        entries = []
        state.write(LOG, entries)
    return entries


class RecordingProducer(DataProducer):
    type_name = "recording-producer"

    def produce(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        log(state).append(f"produce {self.name}: {','.join(e.id for e in endpoints)}")


class OnlyFirstFilter(Filter):
    type_name = "only-first-filter"

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        log(state).append(f"filter {self.name}: {','.join(e.id for e in endpoints)}")
        return list(endpoints[:1])


class TwoProfiles(ProfileHandler):
    type_name = "two-profiles"

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        log(state).append("pick")
        return {name: p for name, p in profiles.items() if name not in results}

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        return SchedulingResult(profile_results=dict(results), primary_profile="a")


def request() -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="p", body={}, headers={})


def test_producers_run_once_per_cycle_in_order_with_every_candidate_before_any_pick_or_filter() -> None:
    first, second = RecordingProducer("first", NoParams()), RecordingProducer("second", NoParams())
    flt = OnlyFirstFilter("narrow", NoParams())
    picker = MaxScorePicker("picker", rng=random.Random(0))
    profiles = {name: SchedulingProfile(name, (flt,), (), picker) for name in ("a", "b")}
    scheduler = Scheduler(TwoProfiles("two", NoParams()), profiles, producers=(first, second))
    state = CycleState()

    scheduler.schedule(request(), [E1, E2, E3], state)

    everyone = f"{E1.id},{E2.id},{E3.id}"
    assert log(state) == [
        f"produce first: {everyone}",
        f"produce second: {everyone}",
        "pick",
        f"filter narrow: {everyone}",
        f"filter narrow: {everyone}",
        "pick",
    ]
    assert scheduler.producers == (first, second)


class Metrics:
    def __init__(self) -> None:
        self.observed: list[tuple[str, str, str]] = []

    def plugin_observer(self, extension_point: str, plugin_type: str, plugin_name: str) -> Callable[[float], None]:
        return lambda seconds: self.observed.append((extension_point, plugin_type, plugin_name))

    def observe_scheduling(self, seconds: float) -> None: ...

    def record_decision(self, profile: str, endpoint: str) -> None: ...

    def record_scheduling_error(self, reason: str) -> None: ...


def test_producer_latency_is_recorded_under_its_extension_point() -> None:
    metrics = Metrics()
    producer = RecordingProducer("rec", NoParams())
    picker = MaxScorePicker("picker", rng=random.Random(0))
    profiles = {"a": SchedulingProfile("a", (), (), picker)}
    Scheduler(TwoProfiles("two", NoParams()), profiles, metrics, (producer,)).schedule(request(), [E1])
    assert ("DataProducer.produce", "recording-producer", "rec") in metrics.observed


OPTIMIZED = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: inflight-load-producer
- type: approx-prefix-cache-producer
- type: prefix-cache-affinity-filter
  parameters: {explorationProbability: 0.5, maxTTFTPenaltyMs: 0}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""


def test_the_builder_hands_the_scheduler_every_configured_producer_in_document_order() -> None:
    config = load_config(OPTIMIZED, REGISTRY)
    names = [p.name for p in config.scheduler.producers]
    assert names == ["inflight-load-producer", "approx-prefix-cache-producer"]


def test_a_profile_cannot_refer_to_a_producer() -> None:
    text = OPTIMIZED + "  - pluginRef: inflight-load-producer\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, REGISTRY)
    assert (
        'schedulingProfiles[0].plugins[2].pluginRef: plugin "inflight-load-producer" is a data producer; '
        "a profile holds only filters, scorers and pickers" in str(info.value)
    )


def test_a_filter_that_uses_randomness_gets_a_generator_seeded_from_the_run() -> None:
    # E1 holds the whole prompt, so the filter keeps E1 alone unless it explores (probability 0.5).
    def explored(seed: int) -> list[bool]:
        config = load_config(OPTIMIZED, REGISTRY, rng=random.Random(seed))
        flt = config.plugins["prefix-cache-affinity-filter"]
        assert isinstance(flt, Filter)
        outcomes = []
        for _ in range(32):
            state = CycleState()
            state.write(prefix_match_key("approx-prefix-cache-producer"), PrefixMatchInfo({E1.id: 4}, 4, 64, 256))
            outcomes.append(len(flt.filter(state, request(), [E1, E2, E3])) == 3)
        return outcomes

    assert explored(7) == explored(7)
    assert explored(7) != explored(8)
    assert 0 < sum(explored(7)) < 32
