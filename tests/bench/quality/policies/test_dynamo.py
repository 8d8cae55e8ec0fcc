from __future__ import annotations

import random
from collections.abc import Callable

from kvroute.bench.quality.policies.dynamo import Dynamo, select_worker, worker_cost
from kvroute.simulator.des.harness import EngineView, RequestRecord, WorkloadRequest
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.profiles import PROFILES

Warm = Callable[[Engine, list[int], str], None]


def test_the_documented_example_picks_the_second_worker() -> None:
    # Workers with (prefill, decode) blocks (8, 10), (5, 5), (2, 9) cost 18, 10, 11 at overlap weight 1.
    costs = [worker_cost(1.0, prefill, decode) for prefill, decode in ((8, 10), (5, 5), (2, 9))]
    assert costs == [18, 10, 11]
    assert select_worker(costs, [0, 0, 0], random.Random(0)) == 1
    # A higher overlap weight favours the worker with the most cached blocks: 2*8+10, 2*5+5, 2*2+9.
    assert (
        select_worker([worker_cost(2.0, p, d) for p, d in ((8, 10), (5, 5), (2, 9))], [0, 0, 0], random.Random(0)) == 2
    )


def test_ties_go_to_the_smallest_tree_then_to_a_seeded_draw() -> None:
    assert select_worker([5, 5, 7], [30, 10, 0], random.Random(0)) == 1
    draws = {select_worker([5, 5], [3, 3], random.Random(seed)) for seed in range(20)}
    assert draws == {0, 1}


def test_cached_blocks_and_predicted_active_blocks_drive_the_choice(warmed: Warm) -> None:
    tiny = PROFILES["tiny"]  # 16-token blocks
    engines = [EngineView(i, Engine(tiny)) for i in range(2)]
    prompt = list(range(1000, 1080))  # 80 tokens, 5 blocks
    warmed(engines[0].engine, prompt[:64], "warm")  # engine 0 caches the first 4 blocks
    policy = Dynamo(seed=0)
    # Engine 0: prefill (80 - 64) / 16 = 1 block, decode 0 active + 5 new = 5 -> 6; engine 1: 5 + 5 = 10.
    assert policy.route(WorkloadRequest("a", 0.0, "", prompt, 20), engines, 0.0) == 0
    worker = policy.workers[0]
    assert (worker.active_blocks, worker.pending_prefill_tokens) == (5, 16)
    # The same prompt again shares the 5 active blocks; engine 0 still wins on cache, engine 1 has none.
    assert policy.route(WorkloadRequest("b", 0.0, "", prompt, 20), engines, 0.0) == 0
    assert (worker.active_blocks, worker.pending_prefill_tokens) == (5, 32)
    record = RequestRecord("a", 0, 0.0, 80)
    policy.on_tokens(record, 1, 0.1)  # first token: prefill done; 81 tokens cross into a 6th block
    assert (worker.active_blocks, worker.pending_prefill_tokens) == (6, 16)
    policy.on_tokens(record, 15, 0.2)  # 96 tokens: still 6 blocks
    policy.on_tokens(record, 1, 0.3)  # 97: a 7th
    assert worker.active_blocks == 7
    policy.on_finish(record, 0.4)
    policy.on_finish(RequestRecord("b", 0, 0.0, 80), 0.5)
    assert (worker.active_blocks, worker.pending_prefill_tokens) == (0, 0)


def test_a_partial_prompt_block_is_counted_as_the_requests_own() -> None:
    engines = [EngineView(0, Engine(PROFILES["tiny"]))]
    policy = Dynamo(seed=0)
    policy.route(WorkloadRequest("a", 0.0, "", list(range(40)), 4), engines, 0.0)  # 2 full + 1 partial
    policy.route(WorkloadRequest("b", 0.0, "", list(range(40)), 4), engines, 0.0)
    assert policy.workers[0].active_blocks == 2 + 1 + 1
