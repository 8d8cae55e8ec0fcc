"""`precise-prefix-cache-scorer`: prefer the endpoints whose engine reports holding the request's prompt prefix.

Each engine publishes its KV-cache events (vLLM's `--kv-events-config`; the router receives them as
`kvEvents` says, see docs/precise-prefix.md), and the plugin keeps what they report in a `prefix.precise_index`.
The request's prompt is tokenized (`tokenizer`: `estimate`, `hf` or `engine`, see `tokenizers`) before
scheduling (`prepare`), and keyed per full block of B tokens (`prefix.request_keys`, at most
`maxPrefixBlocksToMatch` blocks):

    score_e = matched_e / total_B      (0 for every endpoint when total_B = 0)

where `total_B` is the number of keyed blocks of the prompt and `matched_e` how many of them, from the first, e's
engine holds. B is e's block size: its full-attention group's (`prefix.precise_index`: the size of that group's
full blocks, whatever other KV-cache groups or partial blocks send), else its scraped `cache_config_info`, else
`blockSizeTokens` (16). e.g. a 70-token prompt with B = 16 has 4 full blocks; an endpoint holding the first 3
scores 0.75. A request whose tokens are unknown (the `engine` tokenizer failed) scores 0 everywhere and
publishes no match info; the Director counts the failure.

The matches are published as `PrefixMatchInfo` under `prefix_match_key(<plugin name>)`, in token units
(`PrefixMatchInfo.from_tokens`, blocks of the greatest common divisor of the candidates' block sizes), for
`no-hit-lru-scorer`, `token-load-scorer`, `active-blocks-scorer` and the P/D handler (`prefixPluginName`).

Speculative entries: at `pre_request` the prompt's keys are marked as held by the target of every profile that
picked one (primary, and the prefill target in P/D) for `speculativeTTL` (2 s; 0: off), so a burst of requests
sharing a prefix follows the first before its engine has reported anything; real events confirm or replace them.

Memory: per endpoint at most `lruCapacityPerEndpoint` engine blocks (default twice its scraped `num_gpu_blocks`,
the sum over its data-parallel engines, else 131,072), all endpoints at most `maxEntries` (4,000,000); 170 to
240 bytes per entry (`prefix.precise_index`).
An endpoint that leaves the pool is forgotten at once.

`clock` (default `time.monotonic`) is the time base of the speculative TTL; a discrete-event benchmark passes its
simulated clock, feeds events with `on_kv_events` (or `index.apply`) and sets `LLMRequest.token_ids` itself or
lets a local tokenizer run inside `score`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    EndpointObserver,
    KVEvent,
    KVEventsConsumer,
    KVEventsSubscription,
    LLMRequest,
    Preparer,
    PreRequest,
    SchedulingResult,
    Scorer,
    StateKey,
)
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_holders, prefix_match_key
from kvroute.router.plugins.prefix.precise_index import DEFAULT_CAPACITY, PreciseIndex
from kvroute.router.plugins.prefix.precise_params import PrecisePrefixParams
from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key
from kvroute.router.plugins.tokenizers import PromptTokenizer, TokenizeError, make_tokenizer

log = logging.getLogger(__name__)

GPU_BLOCKS_FACTOR = 2  # engine blocks remembered per endpoint, per block of its cache


class PrecisePrefixCacheScorer(Scorer, PreRequest, EndpointObserver, Preparer, KVEventsConsumer):
    type_name = "precise-prefix-cache-scorer"
    publishes_state = True  # no-hit-lru, token-load, active-blocks and the P/D handler read its match info

    Params = PrecisePrefixParams

    def __init__(
        self,
        name: str,
        params: PrecisePrefixParams,
        *,
        clock: Callable[[], float] = time.monotonic,
        tokenizer: PromptTokenizer | None = None,
    ) -> None:
        super().__init__(name, params)
        self.clock = clock
        self.index = PreciseIndex(max_entries=params.max_entries)
        self._block_size = params.block_size_tokens
        self._max_blocks = params.max_prefix_blocks_to_match
        self._capacity = params.lru_capacity_per_endpoint
        self._ttl = params.speculative_ttl
        self._subscription = params.kv_events.subscription()
        self._tokenizer = tokenizer or make_tokenizer(
            params.tokenizer, path=params.tokenizer_path, timeout=params.tokenize_timeout
        )
        self._match_key = prefix_match_key(name)
        self._keys_key: StateKey[dict[int, list[int]]] = StateKey(f"{name}/request-keys")

    # Preparer

    async def prepare(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        if request.token_ids is None:
            request.token_ids = await self._tokenizer.tokenize(request, endpoints)

    async def close(self) -> None:
        await self._tokenizer.close()

    # Scorer

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        tokens = self._tokens(request) if endpoints else None
        if tokens is None:
            return {e.id: 0.0 for e in endpoints}
        groups: dict[int, list[str]] = {}
        for endpoint in endpoints:
            groups.setdefault(self.block_size_of(endpoint), []).append(endpoint.id)
        now = self.clock()
        scores: dict[str, float] = {}
        matched_tokens: dict[str, int] = {}
        unit = total_tokens = 0
        for block_size, ids in groups.items():
            keys = self._keys(state, request, tokens, block_size)
            unit = math.gcd(unit, block_size)
            total_tokens = max(total_tokens, len(keys) * block_size)
            if not keys:
                scores.update(dict.fromkeys(ids, 0.0))
                continue
            found = self.index.match(keys, ids, now)
            total = len(keys)
            get = found.get
            for endpoint_id in ids:
                scores[endpoint_id] = get(endpoint_id, 0) / total
            for endpoint_id, blocks in found.items():
                matched_tokens[endpoint_id] = blocks * block_size
        self._publish(state, matched_tokens, unit, total_tokens, len(tokens))
        return scores

    # PreRequest

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        tokens = request.token_ids
        if not self._ttl or tokens is None:
            return
        expires = self.clock() + self._ttl
        for endpoint in prefix_holders(result):
            keys = self._keys(state, request, tokens, self.block_size_of(endpoint))
            if keys:
                self.index.add_speculative(endpoint.id, keys, expires)

    # EndpointObserver

    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        for endpoint_id in endpoint_ids:
            self.index.remove_endpoint(endpoint_id)

    # KVEventsConsumer

    def kv_events_subscription(self) -> KVEventsSubscription:
        return self._subscription

    def on_kv_events(self, endpoint: Endpoint, model: str, events: Sequence[KVEvent], rank: int = 0) -> int:
        self.index.set_capacity(endpoint.id, self.capacity_of(endpoint))
        return self.index.apply(endpoint.id, model, events, self.clock(), rank)

    def kv_index_entries(self) -> int:
        return self.index.entries

    # Helpers

    def block_size_of(self, endpoint: Endpoint) -> int:
        """Tokens per block on the endpoint: its match group's from its events, else its metrics, else
        `blockSizeTokens`."""
        return self.index.block_size_of(endpoint.id) or endpoint.metrics.block_size or self._block_size

    def capacity_of(self, endpoint: Endpoint) -> int:
        """Engine blocks remembered for the endpoint."""
        if self._capacity is not None:
            return self._capacity
        gpu_blocks = endpoint.metrics.num_gpu_blocks
        return GPU_BLOCKS_FACTOR * gpu_blocks if gpu_blocks else DEFAULT_CAPACITY

    def _tokens(self, request: LLMRequest) -> list[int] | None:
        tokens = request.token_ids
        if tokens is not None:
            return tokens
        try:
            tokens = self._tokenizer.tokenize_now(request)
        except TokenizeError as exc:
            log.debug("request %s: %s; %s scores every endpoint 0", request.request_id, exc, self.name)
            return None
        if tokens is None:
            log.debug("request %s has no token ids; %s scores every endpoint 0", request.request_id, self.name)
            return None
        request.token_ids = tokens
        return tokens

    def _keys(self, state: CycleState, request: LLMRequest, tokens: list[int], block_size: int) -> list[int]:
        """The request's keys for `block_size`, computed once per request and block size."""
        cached = state.read(self._keys_key)
        if cached is None:
            cached = {}
            state.write(self._keys_key, cached)
        keys = cached.get(block_size)
        if keys is None:
            keys = cached[block_size] = chain_keys(tokens, block_size, root_key(request.model), self._max_blocks)
        return keys

    def _publish(
        self, state: CycleState, matched_tokens: dict[str, int], unit: int, total_tokens: int, prompt_tokens: int
    ) -> None:
        earlier = state.read(self._match_key)
        if earlier is not None:
            earlier_unit = int(earlier.block_tokens)
            unit = math.gcd(unit, earlier_unit)
            merged = {endpoint_id: blocks * earlier_unit for endpoint_id, blocks in earlier.matched_blocks.items()}
            matched_tokens = merged | matched_tokens
            total_tokens = max(total_tokens, earlier.total_blocks * earlier_unit)
        matched = {endpoint_id: tokens // unit for endpoint_id, tokens in matched_tokens.items()}
        state.write(self._match_key, PrefixMatchInfo.from_tokens(matched, total_tokens // unit, unit, prompt_tokens))
