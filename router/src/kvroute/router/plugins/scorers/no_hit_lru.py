"""`no-hit-lru-scorer`: spread requests that hit no cache, so new prefixes do not pile up on a few endpoints.

A request is cold when no endpoint matched any of its prefix blocks, according to the `PrefixMatchInfo` of the
prefix plugin named `prefixPluginName` (default "prefix-cache-scorer"); without that info every request is cold.
The prefix plugin must therefore come before this scorer in the profile.

- Warm request: every endpoint scores 0.5 (this scorer stays out of the way of the cache-affinity scorers).
- Cold request: the N candidates are ranked, never cold-served first (in the order given), then those cold-served
  longest ago first; rank r (0-based) scores

      score = 1 - r / (N - 1)        (N = 1: 1.0)

  e.g. candidates [A, B, C, D] where B then A were cold-served (A most recently): C 1.0, D 2/3, B 1/3, A 0.

Only cold requests update the order: at `pre_request` the targets (primary and, in P/D, prefill) move to most
recent. At most `lruSize` (1024) endpoints are remembered; the least recent one forgotten counts as never served.
An endpoint that leaves the pool is forgotten at once (`on_endpoints_removed`). With fleet sync, a peer's cold
request moves its targets to most recent here too (`FleetShared`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    EndpointObserver,
    FleetShared,
    LLMRequest,
    PreRequest,
    SchedulingResult,
    Scorer,
)
from kvroute.router.plugins.fleet_values import endpoint_ids
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_holders, prefix_match_key

WARM_SCORE = 0.5


class NoHitLRUScorer(Scorer, PreRequest, EndpointObserver, FleetShared):
    type_name = "no-hit-lru-scorer"

    class Params(PluginParams):
        lru_size: int = Field(default=1024, ge=1, description="Endpoints remembered.")
        prefix_plugin_name: str = Field(
            default="prefix-cache-scorer",
            min_length=1,
            description="Name of the prefix plugin whose match info says whether a request is cold.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._lru_size = params.lru_size
        self._match_key = prefix_match_key(params.prefix_plugin_name)
        self._served: OrderedDict[str, None] = OrderedDict()  # cold-served endpoints, least recent first

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        if not self._is_cold(state.read(self._match_key)):
            return {e.id: WARM_SCORE for e in endpoints}
        candidates = {e.id for e in endpoints}
        never = [e.id for e in endpoints if e.id not in self._served]
        ranked = never + [endpoint_id for endpoint_id in self._served if endpoint_id in candidates]
        last = len(ranked) - 1
        if last == 0:
            return {ranked[0]: 1.0}
        return {endpoint_id: 1.0 - rank / last for rank, endpoint_id in enumerate(ranked)}

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if self._is_cold(state.read(self._match_key)):
            self._touch(endpoint.id for endpoint in prefix_holders(result))

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        if not self._is_cold(state.read(self._match_key)):
            return None
        return [endpoint.id for endpoint in prefix_holders(result)]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        self._touch(endpoint_id for endpoint_id in endpoint_ids(shared) if endpoint_id in endpoints)

    def _touch(self, served: Iterable[str]) -> None:
        """Make the endpoints the most recently cold-served, in order."""
        for endpoint_id in served:
            self._served.pop(endpoint_id, None)
            self._served[endpoint_id] = None
        while len(self._served) > self._lru_size:
            self._served.popitem(last=False)

    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        for endpoint_id in endpoint_ids:
            self._served.pop(endpoint_id, None)

    @staticmethod
    def _is_cold(info: PrefixMatchInfo | None) -> bool:
        return info is None or not info.any_hit()
