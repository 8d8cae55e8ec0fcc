"""Extension points. Each docstring is the whole contract: when the runner calls it and what it may return.

A plugin is instantiated from config by type name (`type_name`) with validated `Params` and a unique `name`;
one object may implement several extension points (e.g. a scorer that is also a PreRequest hook), and the
runner calls each role it implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kvroute.router.framework.cycle_state import CycleState
from kvroute.router.framework.endpoint import Endpoint
from kvroute.router.framework.request import LLMRequest, ResponseInfo
from kvroute.router.framework.results import (
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
    ScoredEndpoint,
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base of every plugin: a registered `type_name`, a pydantic `Params` model, and an instance `name`."""

    type_name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    # True: the constructor takes a keyword argument `clock` (`framework.clock`), given by the config builder.
    uses_clock: ClassVar[bool] = False
    # True: the constructor takes a keyword argument `rng` (a `random.Random`), given by the config builder,
    # seeded from the run's generator when there is one (pickers always take it).
    uses_rng: ClassVar[bool] = False

    def __init__(self, name: str, params: BaseModel) -> None:
        self.name = name
        self.params = params


class ProfileHandler(Plugin, ABC):
    @abstractmethod
    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        """Called first with no results, then again after the profiles it returned have run, until it returns an
        empty dict. A later call may choose profiles based on earlier results (P/D: prefill after decode). Each
        profile runs at most once per request; picking one again is an error."""

    @abstractmethod
    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        """Called once after the last `pick`; names the primary profile and any headers to add to the request.
        Raising `NoEndpointsError` means the request cannot be served (the front door answers 503)."""


class DataProducer(Plugin, ABC):
    @abstractmethod
    def produce(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        """Called once per scheduling cycle, before the profile handler's first `pick`, with every candidate
        endpoint of the request; producers run in configured order. It publishes in `state` what filters,
        scorers, the handler and the request hooks of the same cycle read (prefix matches, in-flight load); it
        neither narrows nor orders the candidates. An exception fails the cycle like any plugin's. A producer
        is not part of any profile: it runs whenever it is configured."""


class Filter(Plugin, ABC):
    @abstractmethod
    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Called per profile, in configured order, before scoring; returns the subset to keep. An empty result
        ends the profile with no endpoints."""


class Scorer(Plugin, ABC):
    # A scorer that publishes CycleState other scorers read (the prefix scorer's match info) sets this; the
    # runner scores such publishers first, whatever their order in the profile.
    publishes_state: ClassVar[bool] = False

    @abstractmethod
    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        """Called per profile with the filtered endpoints; returns a score in [0, 1] per endpoint id, higher is
        better (missing ids score 0). The runner clamps, multiplies by the profile's weight and sums; scorers
        never see weights."""


class Picker(Plugin, ABC):
    @abstractmethod
    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        """Called per profile with the summed scores of every filtered endpoint; returns the target first, then
        fallbacks (at most the picker's `maxNumOfEndpoints`)."""


class PreRequest(Plugin, ABC):
    @abstractmethod
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """Called once after scheduling succeeds and before the request is forwarded (e.g. to record the pick)."""


class ResponseHook(Plugin, ABC):
    """Called for every request that `pre_request` saw. `on_response_complete` runs exactly once, also when the
    client disconnects, the upstream fails or the request is cancelled; `response.error` then says why."""

    def on_response_headers(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo
    ) -> None:
        """The upstream answered with status and headers."""

    def on_response_chunk(
        self,
        state: CycleState,
        request: LLMRequest,
        endpoint: Endpoint,
        response: ResponseInfo,
        new_tokens: int,
    ) -> None:
        """A body chunk arrived carrying `new_tokens` output tokens (response.output_tokens is the total)."""

    @abstractmethod
    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        """The request is over, whatever the outcome; release any per-request state here."""


class SaturationDetector(Plugin, ABC):
    max_metrics_age: float | None = None
    """Seconds: the oldest scraped metrics this detector trusts (it counts older ones as stale), None when it does
    not look at their age. The data layer polls idle endpoints slowly, but never so slowly that their metrics
    grow older than this; read once when the router starts."""

    @abstractmethod
    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        """Called at admission with the candidate endpoints; >= 1.0 means the pool is saturated and sheddable
        requests (priority < 0) are rejected."""


class UsageLimitPolicy(Plugin, ABC):
    """Flow control's ceilings: a band may dispatch only while the pool's saturation is below its ceiling."""

    @abstractmethod
    def ceilings(self, priorities: Sequence[int]) -> dict[int, float]:
        """The ceiling (0..1] of each of the active `priorities`, given highest first, without duplicates."""


class EndpointObserver(Plugin, ABC):
    @abstractmethod
    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        """Called by the router on the event loop after endpoints left the pool, outside any request (never during
        a scheduling cycle or a request hook), with their ids (`ip:port`); drop whatever is kept per endpoint for
        them, so memory does not grow with every pod that ever existed. Only plugins of the configuration in
        force are called, once per change. An id may come back later as a new endpoint, which starts from
        nothing. Must not block; an exception is logged and the other observers are still called. State that
        belongs to requests still running on a removed endpoint is not for this call to drop: those requests
        complete, exactly once, as always."""


class Preparer(Plugin, ABC):
    @abstractmethod
    async def prepare(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        """Awaited by the Director before scheduling, after admission, with the request's candidate endpoints; only
        configurations that contain a Preparer have this step (the others schedule without awaiting anything).
        It may fill in what scheduling plugins read from the request (e.g. `token_ids`) and must bound its own
        time. Raising `PreparationFailed` means it could not: the Director counts the failure and schedules
        anyway, so the plugins relying on it must cope without. Any other exception is logged as a bug and
        scheduling proceeds the same way."""

    async def close(self) -> None:
        """Called once when the router stops, or after a reload whose configuration no longer holds this
        instance; releases what `prepare` opened (connections). `prepare` is not called afterwards by the
        router, although a request that started before may still be inside it."""


class PreparationFailed(Exception):
    """A `Preparer` could not prepare the request; the message says why."""


class NoEndpointsError(Exception):
    """No endpoint is eligible for the request."""
