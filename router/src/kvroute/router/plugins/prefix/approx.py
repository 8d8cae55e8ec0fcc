"""The approximate prefix cache: what this router sent where, shared by `prefix-cache-scorer` and
`approx-prefix-cache-producer`, which differ only in when they match (the scorer per profile, with the profile's
filtered endpoints; the producer once per cycle, with every candidate) and in whether they score.

The prompt is hashed into chained blocks of `blockSizeTokens * 4` characters, at most `maxPrefixBlocksToMatch`
of them (`prefix.hashing`). The index (`prefix.index`) remembers which endpoints this router sent which blocks;
`matched_e` is the number of consecutive blocks, from the first, recorded for endpoint e. The matches are
published as `PrefixMatchInfo` under `prefix_match_key(<plugin name>)` (`prefix.match`); a plugin that matches
several times in one cycle (once per profile) adds each run's endpoints to the same info. At `pre_request` the
request's blocks are recorded, optimistically (no feedback from the engine), for the target of every profile that
picked one: the primary target, and the prefill target in P/D.

Each endpoint keeps its `lruCapacityPerServer` (31,250) most recent blocks; with `autoTune` (default) an endpoint
reporting `num_gpu_blocks` keeps that many engine blocks' worth instead,
`num_gpu_blocks * block_size / blockSizeTokens` (just `num_gpu_blocks` when block sizes agree or the engine's is
unknown). An endpoint that leaves the pool is forgotten at once (`on_endpoints_removed`), so pods that went away
hold no memory. GIE's older `hashBlockSize` (characters) is accepted in place of `blockSizeTokens`.

Router replicas with fleet sync share what they record (`FleetShared`): a peer's request records its blocks
for the same endpoints here, 8 bytes per block on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

from pydantic import Field, model_validator

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    EndpointObserver,
    FleetShared,
    LLMRequest,
    PreRequest,
    SchedulingResult,
)
from kvroute.router.plugins.fleet_values import endpoint_ids, fields, pack_hashes, unpack_hashes
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import (
    CHARS_PER_TOKEN,
    DEFAULT_BLOCK_SIZE_TOKENS,
    DEFAULT_MAX_BLOCKS,
    PromptHashes,
    prompt_hashes,
)
from kvroute.router.plugins.prefix.index import PrefixIndex
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_holders, prefix_match_key


class ApproxPrefixParams(PluginParams):
    block_size_tokens: int = Field(default=DEFAULT_BLOCK_SIZE_TOKENS, ge=1, description="Tokens per hashed block.")
    hash_block_size: int | None = Field(
        default=None,
        ge=1,
        description="Characters per hashed block (GIE v0.x); replaces blockSizeTokens * 4.",
    )
    max_prefix_blocks_to_match: int = Field(default=DEFAULT_MAX_BLOCKS, ge=1, description="Blocks hashed at most.")
    lru_capacity_per_server: int = Field(default=31_250, ge=1, description="Blocks remembered per endpoint.")
    auto_tune: bool = Field(default=True, description="Size each endpoint's memory from its num_gpu_blocks.")

    @model_validator(mode="after")
    def _one_block_size(self) -> Self:
        if self.hash_block_size is not None and "block_size_tokens" in self.model_fields_set:
            raise ValueError("set blockSizeTokens or hashBlockSize, not both")
        return self

    @property
    def block_chars(self) -> int:
        if self.hash_block_size is not None:
            return self.hash_block_size
        return self.block_size_tokens * CHARS_PER_TOKEN

    @property
    def max_blocks(self) -> int:
        return self.max_prefix_blocks_to_match


class ApproxPrefixCache(PreRequest, EndpointObserver, FleetShared):
    """The index, its recording at `pre_request`, fleet sync and endpoint removal; subclasses decide when to
    `match`."""

    Params = ApproxPrefixParams

    def __init__(self, name: str, params: ApproxPrefixParams) -> None:
        super().__init__(name, params)
        self._block_chars = params.block_chars
        self._max_blocks = params.max_blocks
        self._capacity = params.lru_capacity_per_server
        self._auto_tune = params.auto_tune
        self._match_key = prefix_match_key(name)
        self._index = PrefixIndex()

    def match(self, state: CycleState, request: LLMRequest, ids: Sequence[str]) -> tuple[dict[str, int], int]:
        """The consecutive blocks matched per endpoint of `ids` (absent: 0) and the request's block count; the
        matches are added to the request's published `PrefixMatchInfo`."""
        hashes = self._hashes(state, request)
        matched = self._index.match(hashes.hashes, ids)
        earlier = state.read(self._match_key)
        published = matched if earlier is None else {**earlier.matched_blocks, **matched}
        state.write(
            self._match_key, PrefixMatchInfo(published, len(hashes.hashes), self._block_chars, hashes.prompt_chars)
        )
        return matched, len(hashes.hashes)

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        hashes = self._hashes(state, request).hashes
        if not hashes:
            return
        for endpoint in prefix_holders(result):
            self._index.record(endpoint.id, hashes, self._capacity_of(endpoint))

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        hashes = self._hashes(state, request).hashes
        holders = prefix_holders(result)
        if not hashes or not holders:
            return None
        return [[endpoint.id for endpoint in holders], pack_hashes(hashes)]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        holders, packed = fields(shared, list, bytes)
        hashes = unpack_hashes(packed)
        for endpoint_id in endpoint_ids(holders):
            endpoint = endpoints.get(endpoint_id)
            if endpoint is not None and hashes:
                self._index.record(endpoint_id, hashes, self._capacity_of(endpoint))

    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        for endpoint_id in endpoint_ids:
            self._index.remove(endpoint_id)

    def _hashes(self, state: CycleState, request: LLMRequest) -> PromptHashes:
        return prompt_hashes(state, request, block_chars=self._block_chars, max_blocks=self._max_blocks)

    def _capacity_of(self, endpoint: Endpoint) -> int:
        gpu_blocks = endpoint.metrics.num_gpu_blocks
        if not self._auto_tune or not gpu_blocks:
            return self._capacity
        engine_block = endpoint.metrics.block_size
        if not engine_block:
            return gpu_blocks
        return max(1, gpu_blocks * engine_block * CHARS_PER_TOKEN // self._block_chars)
