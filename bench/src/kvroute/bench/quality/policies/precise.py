"""`llmd-precise`: llm-d's precise prefix-cache scheduling (KV events), as a plugin inside kvroute's scheduler.

llm-d's precise scorer mirrors each engine's KV cache from its KV events and scores
`matched blocks / prompt blocks` on the tokenized prompt (reference/llmd.md, 1.2). Here a bench-only plugin of
type `precise-prefix-cache-scorer`, registered next to the router's own plugins for this policy, tokenizes the
prompt with the simulator's tokenizer and asks each engine's block manager directly: KV events delivered without
delay, the best case for that design. It publishes its matches as `PrefixMatchInfo` like any prefix scorer. The
configuration is llm-d's "precise" one from its 73%-capacity benchmark: precise prefix 3, KV utilization 2,
queue 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from kvroute.bench.quality.adapter import MODEL, SchedulerPolicy
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Plugin, Scorer
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.registry import REGISTRY
from kvroute.simulator.des.harness import EngineView, Route, WorkloadRequest
from kvroute.simulator.engine.block_manager import chain_hashes, root_hash
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.tokenizer import CHARS_PER_TOKEN, Tokenizer

TYPE_NAME = "precise-prefix-cache-scorer"


class EngineCacheScorer(Scorer):
    type_name = TYPE_NAME
    publishes_state = True
    engines: dict[str, Engine]  # endpoint id -> engine, filled in by `PreciseSchedulerPolicy`

    def __init__(self, name: str, params: BaseModel | None = None) -> None:
        super().__init__(name, params or self.Params())
        self._tokenizer = Tokenizer()
        self._match_key = prefix_match_key(name)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        lora = None if request.model == MODEL else request.model
        first = self.engines[endpoints[0].id]
        block_size = first.profile.block_size
        hashes = chain_hashes(self._tokenizer.encode(request.prompt), block_size, root_hash(first.hash_seed, lora))
        matched = {e.id: len(self.engines[e.id].blocks.match_prefix(hashes, len(hashes))) for e in endpoints}
        earlier = state.read(self._match_key)
        published = matched if earlier is None else {**earlier.matched_blocks, **matched}
        block_chars = block_size * CHARS_PER_TOKEN
        state.write(self._match_key, PrefixMatchInfo(published, len(hashes), block_chars, len(request.prompt)))
        if not hashes:
            return dict.fromkeys(matched, 0.0)
        return {endpoint_id: blocks / len(hashes) for endpoint_id, blocks in matched.items()}


class PreciseSchedulerPolicy(SchedulerPolicy):
    def __init__(self, config_text: str, fleet: Fleet, seed: int) -> None:
        engines: dict[str, Engine] = {}
        scorer = type("BoundEngineCacheScorer", (EngineCacheScorer,), {"engines": engines})
        registry: dict[str, type[Plugin]] = {**REGISTRY, TYPE_NAME: scorer}
        super().__init__(config_text, fleet, seed, registry)
        self._engines = engines

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int | Route:
        if not self._engines:
            self._engines.update((e.id, view.engine) for e, view in zip(self.endpoints, engines, strict=True))
        return super().route(request, engines, now)
