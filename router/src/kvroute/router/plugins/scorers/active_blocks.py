"""`active-blocks-scorer`: prefer the endpoint whose predicted KV-cache work is lowest, with no engine metrics.

The router tracks the KV blocks its own in-flight requests occupy on each endpoint. At `pre_request` the request's
prompt blocks are added to its target: the chained prefix hashes (shared with `prefix-cache-scorer`; blocks of
`blockSizeTokens * 4` characters), reference-counted per endpoint so a prefix shared by several requests counts
once, plus one request-unique block per prompt block past the hashed prefix (`maxPrefixBlocksToMatch`, 256). Each
`blockSizeTokens` output tokens (`response.output_tokens`) add one more request-unique block. At
`on_response_complete` (any outcome) all of the request's blocks are released. Nothing else is kept per endpoint,
so an endpoint leaving the pool is not forgotten here: its blocks belong to requests still running on it. With
fleet sync a peer's request adds (and later releases) its blocks here too (`FleetShared`).

For a request of `n` blocks, the cost on endpoint e is Dynamo's:

    cost_e    = overlapWeight * prefill_e + decode_e
    prefill_e = (n - cached_e) + prefilling_e
    decode_e  = active_e + (n - overlap_e)

- `cached_e`: blocks of the request already in e's prefix cache, from the `PrefixMatchInfo` of the plugin named
  `prefixPluginName` when there is one (converted to this block size; that plugin must come first in the
  profile), else 0;
- `prefilling_e`: the uncached blocks (as above, at their scheduling) of e's requests without a first token yet;
- `active_e`: distinct blocks in use on e; `overlap_e`: how many of the request's blocks, from the first, are
  already in use on e. Hashes are chained, so a request holding block i on e holds blocks 0..i there too: the
  overlap is a prefix, found for every endpoint in one bitmask walk (`prefix.index.longest_runs`).

    score_e = (max(cost) - cost_e) / (max(cost) - min(cost))      (all equal: 1.0)

e.g. Dynamo's example: (prefill, decode) = (8, 10), (5, 5), (2, 9) cost 18, 10, 11 and score 0, 1, 0.875.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from pydantic import Field

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    FleetShared,
    LLMRequest,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
    Scorer,
    StateKey,
)
from kvroute.router.plugins.fleet_values import fields, pack_hashes, unpack_hashes
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import (
    CHARS_PER_TOKEN,
    DEFAULT_BLOCK_SIZE_TOKENS,
    DEFAULT_MAX_BLOCKS,
    PromptHashes,
    prompt_hashes,
)
from kvroute.router.plugins.prefix.index import EndpointSlots, clear_bit, longest_runs
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.normalize import normalize_min_max


@dataclass(slots=True)
class _Load:
    """One endpoint's in-flight blocks."""

    refs: dict[int, int] = field(default_factory=dict)  # prompt block hash -> requests holding it
    unique: int = 0  # request-unique blocks (prompt past the hashed prefix, output)
    prefilling: int = 0

    @property
    def active(self) -> int:
        return len(self.refs) + self.unique


@dataclass(slots=True)
class _Tracked:
    """What one request added, so that exactly that is released."""

    endpoint_id: str
    hashes: tuple[int, ...]
    unique: int
    prefilling: int
    output_blocks: int = 0
    released: bool = False


class ActiveBlocksScorer(Scorer, PreRequest, ResponseHook, FleetShared):
    type_name = "active-blocks-scorer"

    class Params(PluginParams):
        overlap_weight: float = Field(
            default=1.0, ge=0.0, description="Weight of prefill blocks against decode blocks."
        )
        block_size_tokens: int = Field(default=DEFAULT_BLOCK_SIZE_TOKENS, ge=1, description="Tokens per block.")
        prefix_plugin_name: str = Field(
            default="prefix-cache-scorer",
            min_length=1,
            description="Name of the prefix plugin whose match info gives the cached blocks.",
        )

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._weight = params.overlap_weight
        self._block_tokens = params.block_size_tokens
        self._block_chars = params.block_size_tokens * CHARS_PER_TOKEN
        self._match_key = prefix_match_key(params.prefix_plugin_name)
        self._tracked_key: StateKey[_Tracked] = StateKey(f"{name}/active-blocks")
        self._slots = EndpointSlots()
        self._owners: dict[int, int] = {}  # prompt block hash -> bits of the endpoints where it is in use
        self._loads: dict[str, _Load] = {}

    def active_blocks(self, endpoint_id: str) -> int:
        """Distinct blocks the endpoint's in-flight requests occupy, as predicted."""
        load = self._loads.get(endpoint_id)
        return load.active if load is not None else 0

    def prefilling_blocks(self, endpoint_id: str) -> int:
        load = self._loads.get(endpoint_id)
        return load.prefilling if load is not None else 0

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        hashes = self._hashes(state, request)
        n = hashes.total_blocks
        ids = [e.id for e in endpoints]
        overlap = longest_runs(hashes.hashes, self._owners, self._slots.mask(ids), self._slots)
        uncached = self._uncached(state.read(self._match_key), ids, n)
        weight, loads = self._weight, self._loads
        costs: dict[str, float] = {}
        for endpoint_id, own_prefill in zip(ids, uncached, strict=True):
            prefill, decode = own_prefill, n
            load = loads.get(endpoint_id)
            if load is not None:
                prefill += load.prefilling
                decode += load.active - overlap.get(endpoint_id, 0)
            costs[endpoint_id] = weight * prefill + decode
        return normalize_min_max(costs, lower_is_better=True)

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if not result.endpoints:
            return
        target = result.endpoints[0].id
        hashes = self._hashes(state, request)
        tracked = _Tracked(
            endpoint_id=target,
            hashes=hashes.hashes,
            unique=hashes.total_blocks - len(hashes.hashes),
            prefilling=self._uncached(state.read(self._match_key), [target], hashes.total_blocks)[0],
        )
        self._add(tracked)
        state.write(self._tracked_key, tracked)

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        tracked = state.read(self._tracked_key)
        if tracked is None or tracked.released:
            return None
        return [tracked.endpoint_id, pack_hashes(tracked.hashes), tracked.unique, tracked.prefilling]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        endpoint_id, packed, unique, prefilling = fields(shared, str, bytes, int, int)
        if unique < 0 or prefilling < 0:
            raise ValueError("negative block counts")
        tracked = _Tracked(endpoint_id, unpack_hashes(packed), unique, prefilling)
        self._add(tracked)
        state.write(self._tracked_key, tracked)

    def on_response_headers(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo
    ) -> None:
        tracked = state.read(self._tracked_key)
        if tracked is not None and not tracked.released and tracked.endpoint_id != endpoint.id:
            # The request went to a fallback endpoint: its blocks are there, not on the target.
            self._remove(tracked)
            tracked.endpoint_id = endpoint.id
            self._add(tracked)

    def on_response_chunk(
        self,
        state: CycleState,
        request: LLMRequest,
        endpoint: Endpoint,
        response: ResponseInfo,
        new_tokens: int,
    ) -> None:
        tracked = state.read(self._tracked_key)
        if tracked is None or tracked.released or response.output_tokens <= 0:
            return
        load = self._loads[tracked.endpoint_id]
        load.prefilling -= tracked.prefilling
        tracked.prefilling = 0
        grown = response.output_tokens // self._block_tokens - tracked.output_blocks
        if grown > 0:
            tracked.output_blocks += grown
            tracked.unique += grown
            load.unique += grown

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        tracked = state.read(self._tracked_key)
        if tracked is None or tracked.released:
            return
        self._remove(tracked)
        tracked.released = True

    def _hashes(self, state: CycleState, request: LLMRequest) -> PromptHashes:
        return prompt_hashes(state, request, block_chars=self._block_chars, max_blocks=DEFAULT_MAX_BLOCKS)

    def _uncached(self, info: PrefixMatchInfo | None, endpoint_ids: Sequence[str], blocks: int) -> list[int]:
        """Per endpoint, the request's blocks not in its prefix cache (all of them without match info)."""
        if info is None or not info.matched_blocks:
            return [blocks] * len(endpoint_ids)
        cached: Iterable[int] = map(info.matched_blocks.get, endpoint_ids, repeat(0))
        if info.block_chars != self._block_chars:
            chars, ours = info.block_chars, self._block_chars
            cached = (matched * chars // ours for matched in cached)
        return [blocks - c if c < blocks else 0 for c in cached]

    def _add(self, tracked: _Tracked) -> None:
        load = self._loads.get(tracked.endpoint_id)
        if load is None:
            load = self._loads[tracked.endpoint_id] = _Load()
        bit = self._slots.acquire(tracked.endpoint_id)
        refs = load.refs
        for h in tracked.hashes:
            held = refs.get(h, 0)
            if not held:
                self._owners[h] = self._owners.get(h, 0) | bit
            refs[h] = held + 1
        load.unique += tracked.unique
        load.prefilling += tracked.prefilling

    def _remove(self, tracked: _Tracked) -> None:
        load = self._loads.get(tracked.endpoint_id)
        if load is None:
            return
        bit = self._slots.bit(tracked.endpoint_id)
        refs = load.refs
        for h in tracked.hashes:
            held = refs[h] - 1
            if held:
                refs[h] = held
            else:
                del refs[h]
                clear_bit(self._owners, h, bit)
        load.unique -= tracked.unique
        load.prefilling -= tracked.prefilling
        if not refs and not load.unique and not load.prefilling:
            del self._loads[tracked.endpoint_id]
            self._slots.release(tracked.endpoint_id)
