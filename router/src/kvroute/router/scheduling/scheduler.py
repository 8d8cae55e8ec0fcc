"""The scheduling cycle: run the profiles a handler chooses, then let it combine their results.

    each data producer, in order: producer.produce(state, request, candidates)
    loop: profiles = handler.pick(state, request, all_profiles, results_so_far)
          stop when it returns no profile
          for each chosen profile:
              endpoints = candidates, narrowed by each filter in order (empty -> the profile picks nothing)
              total_e   = sum over scorers s of weight_s * clamp(score_s[e], 0, 1)   (missing id or NaN -> 0)
              result    = picker(ScoredEndpoint(e, total_e) for e in endpoints)      (in filter output order)
    result = handler.process_results(state, request, results)

A handler may pick each profile at most once per cycle, and at most `len(profiles)` times return profiles, so a
handler bug cannot spin the event loop forever. Every plugin call is timed once (two `perf_counter` reads); the
observers are bound when the scheduler is built so the cycle itself does no metric lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from time import perf_counter
from types import MappingProxyType
from typing import Protocol

from kvroute.router.framework import (
    CycleState,
    DataProducer,
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
)
from kvroute.router.framework.plugins import NoEndpointsError, Plugin

Observe = Callable[[float], None]

# Values of the `extension_point` label of the per-plugin latency histogram.
EP_PRODUCE = "DataProducer.produce"
EP_PROFILE_PICK = "ProfileHandler.pick"
EP_PROCESS_RESULTS = "ProfileHandler.process_results"
EP_FILTER = "Filter.filter"
EP_SCORE = "Scorer.score"
EP_PICK = "Picker.pick"

# Values of the `reason` label of the scheduling error counter.
REASON_NO_CANDIDATES = "no_candidates"
REASON_NO_ENDPOINTS = "no_endpoints"
REASON_HANDLER_LOOP = "handler_loop"
REASON_PLUGIN_ERROR = "plugin_error"


class SchedulerMetrics(Protocol):
    """What the scheduler records; `kvroute.router.observability.RouterMetrics` implements it."""

    def plugin_observer(self, extension_point: str, plugin_type: str, plugin_name: str) -> Observe: ...

    def observe_scheduling(self, seconds: float) -> None: ...

    def record_decision(self, profile: str, endpoint: str) -> None: ...

    def record_scheduling_error(self, reason: str) -> None: ...


class SchedulingError(Exception):
    """The profile handler broke its contract (picked a profile twice, or never stopped picking)."""


def _ignore(seconds: float) -> None:
    """Observer used when the scheduler has no metrics."""


_EMPTY = ProfileResult(())


class _Plan:
    """A profile with each plugin paired with its latency observer."""

    __slots__ = ("filters", "picker", "profile", "scorers")

    def __init__(self, profile: SchedulingProfile, observer: Callable[[str, Plugin], Observe]) -> None:
        self.profile = profile
        self.filters: tuple[tuple[Filter, Observe], ...] = tuple((f, observer(EP_FILTER, f)) for f in profile.filters)
        self.scorers: tuple[tuple[Scorer, float, Observe], ...] = tuple(
            (s, w, observer(EP_SCORE, s)) for s, w in profile.scorers
        )
        self.picker: tuple[Picker, Observe] = (profile.picker, observer(EP_PICK, profile.picker))


class Scheduler:
    """Runs scheduling cycles for one configuration; immutable, shared by all requests."""

    __slots__ = ("_metrics", "_observe_pick", "_observe_process", "_plans", "_producers", "handler", "profiles")

    def __init__(
        self,
        handler: ProfileHandler,
        profiles: Mapping[str, SchedulingProfile],
        metrics: SchedulerMetrics | None = None,
        producers: Sequence[DataProducer] = (),
    ) -> None:
        self.handler = handler
        self.profiles: Mapping[str, SchedulingProfile] = MappingProxyType(dict(profiles))
        self._metrics = metrics
        self._plans = {name: _Plan(profile, self._observer) for name, profile in self.profiles.items()}
        self._observe_pick = self._observer(EP_PROFILE_PICK, handler)
        self._observe_process = self._observer(EP_PROCESS_RESULTS, handler)
        self._producers = tuple((p, self._observer(EP_PRODUCE, p)) for p in producers)

    @property
    def producers(self) -> tuple[DataProducer, ...]:
        return tuple(p for p, _ in self._producers)

    def _observer(self, extension_point: str, plugin: Plugin) -> Observe:
        if self._metrics is None:
            return _ignore
        return self._metrics.plugin_observer(extension_point, plugin.type_name, plugin.name)

    def schedule(
        self, request: LLMRequest, candidates: Sequence[Endpoint], state: CycleState | None = None
    ) -> SchedulingResult:
        """Picks endpoints for `request` among `candidates`. The caller keeps `state` for the request's lifetime
        (response hooks read it). Raises `NoEndpointsError` when there is no candidate or the handler finds no
        endpoint, `SchedulingError` when the handler loops; plugin exceptions propagate."""
        metrics = self._metrics
        start = perf_counter()
        try:
            result = self._schedule(request, candidates, CycleState() if state is None else state)
        except NoEndpointsError:
            if metrics is not None:
                metrics.record_scheduling_error(REASON_NO_ENDPOINTS if candidates else REASON_NO_CANDIDATES)
            raise
        except SchedulingError:
            if metrics is not None:
                metrics.record_scheduling_error(REASON_HANDLER_LOOP)
            raise
        except Exception:
            if metrics is not None:
                metrics.record_scheduling_error(REASON_PLUGIN_ERROR)
            raise
        finally:
            if metrics is not None:
                metrics.observe_scheduling(perf_counter() - start)
        if metrics is not None:
            for profile_name, profile_result in result.profile_results.items():
                if profile_result.endpoints:
                    metrics.record_decision(profile_name, profile_result.endpoints[0].id)
        return result

    def _schedule(self, request: LLMRequest, candidates: Sequence[Endpoint], state: CycleState) -> SchedulingResult:
        if not candidates:
            raise NoEndpointsError("no candidate endpoints")
        for producer, observe in self._producers:
            t = perf_counter()
            producer.produce(state, request, candidates)
            observe(perf_counter() - t)
        handler = self.handler
        results: dict[str, ProfileResult] = {}
        for _ in range(len(self.profiles) + 1):
            t = perf_counter()
            picked = handler.pick(state, request, self.profiles, results)
            self._observe_pick(perf_counter() - t)
            if not picked:
                break
            for name, profile in picked.items():
                if name in results:
                    raise SchedulingError(f'profile handler "{handler.name}" picked profile "{name}" twice')
                plan = self._plans.get(name)
                if plan is None or plan.profile is not profile:
                    plan = _Plan(profile, self._observer)
                results[name] = self._run(plan, state, request, candidates)
        else:
            raise SchedulingError(
                f'profile handler "{handler.name}" still picked profiles after {len(self.profiles) + 1} rounds'
            )
        t = perf_counter()
        result = handler.process_results(state, request, results)
        self._observe_process(perf_counter() - t)
        return result

    @staticmethod
    def _run(plan: _Plan, state: CycleState, request: LLMRequest, candidates: Sequence[Endpoint]) -> ProfileResult:
        endpoints = candidates
        for flt, observe in plan.filters:
            t = perf_counter()
            endpoints = flt.filter(state, request, endpoints)
            observe(perf_counter() - t)
            if not endpoints:
                return _EMPTY
        ids = [e.id for e in endpoints]
        totals = [0.0] * len(endpoints)
        for scorer, weight, observe in plan.scorers:
            t = perf_counter()
            scores = scorer.score(state, request, endpoints)
            observe(perf_counter() - t)
            totals = [
                total + (weight if score >= 1.0 else weight * score) if score > 0.0 else total  # NaN: not > 0
                for total, score in zip(totals, map(scores.get, ids, repeat(0.0)), strict=True)
            ]
        scored = list(map(ScoredEndpoint, endpoints, totals))
        picker, observe = plan.picker
        t = perf_counter()
        picked = picker.pick(state, request, scored)
        observe(perf_counter() - t)
        return ProfileResult(tuple(picked))
