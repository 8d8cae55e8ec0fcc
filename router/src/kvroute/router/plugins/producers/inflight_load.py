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
from typing import Any

from pydantic import Field

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
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import estimate_tokens
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.in_flight import InFlightLedger

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


class InFlightLoadProducer(DataProducer, PreRequest, ResponseHook, FleetShared):
    type_name = "inflight-load-producer"

    class Params(PluginParams):
        prefix_match_info_producer_name: str = Field(
            default=DEFAULT_PREFIX_PRODUCER,
            min_length=1,
            description="Name of the prefix plugin whose match info gives the cached part of the prompt.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._key = in_flight_load_key(name)
        # Charged together, one charge per profile target; the primary target's request stays until completion.
        self._token_ledger = InFlightLedger(name, "in-flight-tokens")
        self._request_ledger = InFlightLedger(name, "in-flight-requests")
        self._tokens, self._requests = self._token_ledger.totals, self._request_ledger.totals
        self._load = InFlightLoad(
            self._tokens, self._requests, prefix_match_key(params.prefix_match_info_producer_name)
        )

    def in_flight_tokens(self, endpoint_id: str) -> int:
        return self._token_ledger.total(endpoint_id)

    def in_flight_requests(self, endpoint_id: str) -> int:
        return self._request_ledger.total(endpoint_id)

    def produce(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        state.write(self._key, self._load)

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        charges: list[tuple[str, int, bool]] = []
        for name, profile_result in result.profile_results.items():
            target = profile_result.primary
            if target is not None:
                tokens = self._load.request_tokens(state, request, target.id)
                charges.append((target.id, tokens, name == result.primary_profile))
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
            self._token_ledger.release(state)
            self._request_ledger.release(state, final=False)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        self._token_ledger.release(state)
        self._request_ledger.release(state)

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        tokens, requests = self._token_ledger.charges(state), self._request_ledger.charges(state)
        if not tokens:
            return None
        return [[t.endpoint_id, t.amount, r.until_complete] for t, r in zip(tokens, requests, strict=True)]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        if not isinstance(shared, list | tuple):
            raise TypeError("in-flight charges must be a list")
        charges: list[tuple[str, int, bool]] = []
        for item in shared:
            endpoint_id, tokens, primary = fields(item, str, int, bool)
            if tokens < 0:
                raise ValueError("a negative in-flight charge")
            charges.append((endpoint_id, tokens, primary))
        self._charge(state, charges)

    def _charge(self, state: CycleState, charges: list[tuple[str, int, bool]]) -> None:
        if not charges or self._token_ledger.charges(state):
            return
        for endpoint_id, tokens, primary in charges:
            self._token_ledger.charge(state, endpoint_id, tokens)
            self._request_ledger.charge(state, endpoint_id, 1, until_complete=primary)
