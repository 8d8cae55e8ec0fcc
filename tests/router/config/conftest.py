"""Stand-in plugins for configuration tests: one of each role, registered under the type names defaulting uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    Filter,
    LLMRequest,
    Picker,
    Plugin,
    PreRequest,
    ProfileHandler,
    ProfileResult,
    ResponseHook,
    ResponseInfo,
    SaturationDetector,
    SchedulingProfile,
    SchedulingResult,
    ScoredEndpoint,
    Scorer,
)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ThresholdFilter(Filter):
    type_name = "threshold-filter"

    class Params(_Params):
        threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.metrics.kv_usage < self.params.threshold]


class ConstantScorer(Scorer):
    type_name = "constant-scorer"

    class Params(_Params):
        value: float = 0.5

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return {e.id: self.params.value for e in endpoints}


class QueueScorer(ConstantScorer):
    type_name = "queue-scorer"


class KvCacheUtilizationScorer(ConstantScorer):
    type_name = "kv-cache-utilization-scorer"


class PrefixCacheScorer(Scorer, PreRequest, ResponseHook):
    """Stateful: remembers where requests went, which a reload must not forget."""

    type_name = "prefix-cache-scorer"

    class Params(_Params):
        block_size_tokens: int = Field(default=16, gt=0, alias="blockSizeTokens")

    def __init__(self, name: str, params: BaseModel) -> None:
        super().__init__(name, params)
        self.index: dict[str, str] = {}

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return {e.id: 1.0 for e in endpoints if self.index.get(request.prompt) == e.id}

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        self.index[request.prompt] = result.endpoints[0].id

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        pass


class MaxScorePicker(Picker):
    type_name = "max-score-picker"

    class Params(_Params):
        max_num_of_endpoints: int = Field(default=1, gt=0, alias="maxNumOfEndpoints")

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        ranked = sorted(scored, key=lambda s: -s.score)
        return [s.endpoint for s in ranked[: self.params.max_num_of_endpoints]]


class RandomPicker(MaxScorePicker):
    type_name = "random-picker"


class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

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
        return SchedulingResult(dict(results), next(iter(results)))


class PdProfileHandler(SingleProfileHandler):
    type_name = "pd-profile-handler"

    class Params(_Params):
        threshold: int = Field(default=0, ge=0)


class UtilizationDetector(SaturationDetector):
    type_name = "utilization-detector"

    class Params(_Params):
        queue_depth_threshold: int = Field(default=5, gt=0, alias="queueDepthThreshold")
        kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0, alias="kvCacheUtilThreshold")
        metrics_staleness_threshold: str = Field(default="200ms", alias="metricsStalenessThreshold")
        headroom: float = Field(default=0.0, ge=0.0)

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        return 0.0


class ConcurrencyDetector(UtilizationDetector):
    type_name = "concurrency-detector"


class LabelAuditHook(PreRequest):
    type_name = "label-audit-hook"

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        pass


class BrokenScorer(ConstantScorer):
    type_name = "broken-scorer"

    def __init__(self, name: str, params: BaseModel) -> None:
        raise ValueError("no GPU in sight")


PLUGINS: tuple[type[Plugin], ...] = (
    ThresholdFilter,
    ConstantScorer,
    QueueScorer,
    KvCacheUtilizationScorer,
    PrefixCacheScorer,
    MaxScorePicker,
    RandomPicker,
    SingleProfileHandler,
    PdProfileHandler,
    UtilizationDetector,
    ConcurrencyDetector,
    LabelAuditHook,
    BrokenScorer,
)


@pytest.fixture
def registry() -> dict[str, type[Plugin]]:
    return {cls.type_name: cls for cls in PLUGINS}
