"""`inflight-load-producer`: the requests and uncached prompt tokens this router has in flight on each endpoint.

llm-d's router-side load accounting, published once per scheduling cycle (before any filter runs) as an
`InFlightLoad` under `in_flight_load_key(<plugin name>)`, for `token-load-scorer` and the load gate of
`prefix-cache-affinity-filter`.

At `pre_request` the target of every profile that picked one (the primary target; in P/D the prefill target
too) is charged one request and the request's uncached prompt tokens there:

    uncached_e = info.uncached_tokens(e)     when the prefix producer named `prefixMatchInfoProducerName`
                                             (default "approx-prefix-cache-producer") published its matches
    uncached_e = ceil(len(prompt) / 4)       otherwise

(`PrefixMatchInfo.uncached_tokens` is `ceil((prompt_chars - matched_blocks_e * block_chars) / 4)`, so the part of a
long prompt beyond the matched cap counts as uncached). The first response chunk carrying output tokens means
prefill is done: every target's tokens are released then, and so is the request of every target but the primary
one (the prefill endpoint has handed the request over). `on_response_complete` releases whatever is left, once,
whatever the outcome. e.g. a 1,000-character prompt of which A cached 10 blocks of 64 characters charges A one
request and ceil((1000 - 640) / 4) = 90 tokens; A's tokens drop by 90 at the first token, its request at the end.

`InFlightLoad.request_tokens(state, request, e)` is the same `uncached_e` for a candidate e, which is what
`token-load-scorer` adds to the load already there. Totals are kept only for endpoints with something in flight;
an endpoint leaving the pool keeps its totals until its requests complete (see `scorers.in_flight`). Router
replicas with fleet sync charge each other's requests here too (`FleetShared`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import (
    CycleState,
    DataProducer,
    Endpoint,
    FleetShared,
    LLMRequest,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
    StateKey,
)
from kvroute.router.plugins.fleet_values import fields
from kvroute.router.plugins.prefix.hashing import estimate_tokens
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key

DEFAULT_PREFIX_PRODUCER = "approx-prefix-cache-producer"


@dataclass(frozen=True, slots=True)
class InFlightLoad:
    """An endpoint's load as one producer counts it; read during the cycle it was published in."""

    tokens: Mapping[str, int]  # endpoint id -> uncached prompt tokens in flight (absent: 0)
    requests: Mapping[str, int]  # endpoint id -> requests in flight (absent: 0)
    prefix_key: StateKey[PrefixMatchInfo]  # where the producer reads the cached part of a prompt

    def request_tokens(self, state: CycleState, request: LLMRequest, endpoint_id: str) -> int:
        """The prompt tokens `request` would add to the endpoint: those not in its prefix cache."""
        info = state.read(self.prefix_key)
        if info is None:
            return estimate_tokens(len(request.prompt))
        return info.uncached_tokens(endpoint_id)


_KEYS: dict[str, StateKey[InFlightLoad]] = {}


def in_flight_load_key(producer_name: str) -> StateKey[InFlightLoad]:
    """The key under which the producer named `producer_name` publishes its `InFlightLoad` (one per name)."""
    key = _KEYS.get(producer_name)
    if key is None:
        key = _KEYS.setdefault(producer_name, StateKey(f"{producer_name}/in-flight-load"))
    return key


@dataclass(slots=True)
class _Charge:
    endpoint_id: str
    tokens: int
    primary: bool
    tokens_released: bool = False
    request_released: bool = False


class InFlightLoadProducer(DataProducer, PreRequest, ResponseHook, FleetShared):
    type_name = "inflight-load-producer"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        prefix_match_info_producer_name: str = Field(
            default=DEFAULT_PREFIX_PRODUCER,
            min_length=1,
            alias="prefixMatchInfoProducerName",
            description="Name of the prefix plugin whose match info gives the cached part of the prompt.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._tokens: dict[str, int] = {}
        self._requests: dict[str, int] = {}
        self._key = in_flight_load_key(name)
        # One key per producer: two instances must not release each other's charges.
        self._charges: StateKey[list[_Charge]] = StateKey(f"{name}/in-flight-charges")
        self._load = InFlightLoad(
            MappingProxyType(self._tokens),
            MappingProxyType(self._requests),
            prefix_match_key(params.prefix_match_info_producer_name),
        )

    def in_flight_tokens(self, endpoint_id: str) -> int:
        return self._tokens.get(endpoint_id, 0)

    def in_flight_requests(self, endpoint_id: str) -> int:
        return self._requests.get(endpoint_id, 0)

    def produce(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        state.write(self._key, self._load)

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        charges: list[_Charge] = []
        for name, profile_result in result.profile_results.items():
            target = profile_result.primary
            if target is not None:
                tokens = self._load.request_tokens(state, request, target.id)
                charges.append(_Charge(target.id, tokens, primary=name == result.primary_profile))
        self._charge(state, charges)

    def on_response_chunk(
        self,
        state: CycleState,
        request: LLMRequest,
        endpoint: Endpoint,
        response: ResponseInfo,
        new_tokens: int,
    ) -> None:
        if new_tokens > 0:
            self._release(state, everything=False)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        self._release(state, everything=True)

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        charges = state.read(self._charges)
        if not charges:
            return None
        return [[c.endpoint_id, c.tokens, c.primary] for c in charges]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        if not isinstance(shared, list | tuple):
            raise TypeError("in-flight charges must be a list")
        charges: list[_Charge] = []
        for item in shared:
            endpoint_id, tokens, primary = fields(item, str, int, bool)
            if tokens < 0:
                raise ValueError("a negative in-flight charge")
            charges.append(_Charge(endpoint_id, tokens, primary))
        self._charge(state, charges)

    def _charge(self, state: CycleState, charges: list[_Charge]) -> None:
        if not charges or state.read(self._charges) is not None:
            return
        for c in charges:
            self._tokens[c.endpoint_id] = self._tokens.get(c.endpoint_id, 0) + c.tokens
            self._requests[c.endpoint_id] = self._requests.get(c.endpoint_id, 0) + 1
        state.write(self._charges, charges)

    def _release(self, state: CycleState, *, everything: bool) -> None:
        for c in state.read(self._charges) or ():
            if not c.tokens_released:
                c.tokens_released = True
                _subtract(self._tokens, c.endpoint_id, c.tokens)
            if not c.request_released and (everything or not c.primary):
                c.request_released = True
                _subtract(self._requests, c.endpoint_id, 1)


def _subtract(totals: dict[str, int], endpoint_id: str, amount: int) -> None:
    remaining = totals.get(endpoint_id, 0) - amount
    if remaining > 0:
        totals[endpoint_id] = remaining
    else:
        totals.pop(endpoint_id, None)
