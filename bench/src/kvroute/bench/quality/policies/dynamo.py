"""`dynamo`: NVIDIA Dynamo's KV router, re-implemented from its published description (reference/peers.md, A1):
cost function with predicted active blocks, temperature 0, overlap from KV events.

Blocks are the engine's (`block_size` tokens, chained hashes of token ids). For a request of `isl` prompt tokens
and, on worker w, `overlap_w` prompt blocks in w's KV cache:

    prefill_blocks_w = (isl - overlap_w * block_size + pending_prefill_tokens_w) / block_size
    decode_blocks_w  = active_blocks_w + new_blocks_w
    cost_w           = overlap_score_weight * prefill_blocks_w + decode_blocks_w        (weight 1.0)

- `overlap_w` comes from the worker's real cache, which Dynamo's default indexer mirrors from the engines' KV
  events; here the router reads the simulated engine's cache directly (events without delay).
- Predicted active blocks (Dynamo's `ActiveSequences`), tracked from the router's own decisions: a request adds
  its full prompt blocks (shared ones counted once per worker) and one partial block when `isl` is not a
  multiple of `block_size`; every time its length crosses a block boundary while it generates, the partial
  block becomes a full one and a new partial one starts; everything is freed when the request completes.
  `active_blocks_w` is the number of distinct blocks in use, `new_blocks_w` the request's blocks not already
  active on w. `pending_prefill_tokens_w` sums the uncached prompt tokens of w's requests without a first token.
- Temperature 0: the lowest cost wins; ties go to the worker whose index holds the fewest blocks (tree size),
  then to a seeded random draw.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvroute.bench.quality.policies.base import Policy
from kvroute.simulator.des.harness import EngineView, RequestRecord, WorkloadRequest
from kvroute.simulator.engine.block_manager import chain_hashes, root_hash


@dataclass(slots=True)
class _Worker:
    refs: dict[int, int] = field(default_factory=dict)  # block -> requests holding it
    pending_prefill_tokens: int = 0

    @property
    def active_blocks(self) -> int:
        return len(self.refs)

    def add(self, blocks: Sequence[int]) -> None:
        refs = self.refs
        for block in blocks:
            refs[block] = refs.get(block, 0) + 1

    def remove(self, blocks: Sequence[int]) -> None:
        refs = self.refs
        for block in blocks:
            held = refs[block] - 1
            if held:
                refs[block] = held
            else:
                del refs[block]


@dataclass(slots=True)
class _Sequence:
    worker: int
    blocks: list[int]  # full prompt blocks, then unique ids of the partial / generated blocks
    length: int
    prefill_tokens: int
    prefilling: bool = True


class Dynamo(Policy):
    def __init__(self, seed: int, *, overlap_score_weight: float = 1.0) -> None:
        self.overlap_score_weight = overlap_score_weight
        self.workers: list[_Worker] = []
        self._rng = random.Random(seed)
        self._unique = itertools.count(-1, -1)  # ids of partial / generated blocks, apart from hashes
        self._sequences: dict[str, _Sequence] = {}
        self._block_size = 16

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        if not self.workers:
            self.workers = [_Worker() for _ in engines]
            self._block_size = engines[0].engine.profile.block_size
        block_size = self._block_size
        root = root_hash(engines[0].engine.hash_seed, request.lora_name)
        hashes = chain_hashes(request.prompt_token_ids, block_size, root)
        isl = len(request.prompt_token_ids)
        costs: list[float] = []
        prefill: list[int] = []
        for view, worker in zip(engines, self.workers, strict=True):
            overlap = len(view.engine.blocks.match_prefix(hashes, len(hashes)))
            prefill.append(isl - overlap * block_size)
            prefill_blocks = (prefill[-1] + worker.pending_prefill_tokens) / block_size
            new_blocks = sum(1 for h in hashes if h not in worker.refs) + (isl % block_size != 0)
            costs.append(worker_cost(self.overlap_score_weight, prefill_blocks, worker.active_blocks + new_blocks))
        choice = select_worker(costs, [len(view.engine.blocks.cached) for view in engines], self._rng)
        blocks = list(hashes)
        if isl % block_size:
            blocks.append(next(self._unique))
        sequence = _Sequence(choice, blocks, isl, prefill[choice])
        worker = self.workers[choice]
        worker.add(blocks)
        worker.pending_prefill_tokens += sequence.prefill_tokens
        self._sequences[request.request_id] = sequence
        return choice

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        sequence = self._sequences[record.request_id]
        worker = self.workers[sequence.worker]
        if sequence.prefilling:
            sequence.prefilling = False
            worker.pending_prefill_tokens -= sequence.prefill_tokens
        for _ in range(new_tokens):
            sequence.length += 1
            if sequence.length % self._block_size == 1:
                # The partial block is now full (and still the request's own); a new partial block starts.
                block = next(self._unique)
                sequence.blocks.append(block)
                worker.add((block,))

    def on_finish(self, record: RequestRecord, now: float) -> None:
        sequence = self._sequences.pop(record.request_id)
        worker = self.workers[sequence.worker]
        if sequence.prefilling:
            worker.pending_prefill_tokens -= sequence.prefill_tokens
        worker.remove(sequence.blocks)


def worker_cost(overlap_score_weight: float, prefill_blocks: float, decode_blocks: float) -> float:
    return overlap_score_weight * prefill_blocks + decode_blocks


def select_worker(costs: Sequence[float], tree_sizes: Sequence[int], rng: random.Random) -> int:
    """Temperature 0: the lowest cost; ties to the smallest tree, then a random draw."""
    best = min(costs)
    tied = [i for i, cost in enumerate(costs) if cost == best]
    smallest = min(tree_sizes[i] for i in tied)
    tied = [i for i in tied if tree_sizes[i] == smallest]
    return tied[0] if len(tied) == 1 else rng.choice(tied)
