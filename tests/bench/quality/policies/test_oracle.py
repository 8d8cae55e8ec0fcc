from __future__ import annotations

from collections.abc import Callable

import pytest

from kvroute.bench.quality.policies.oracle import Oracle, predicted_ttft
from kvroute.simulator.des.harness import EngineView, RequestRecord, WorkloadRequest
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.profiles import PROFILES
from kvroute.simulator.engine.request import EngineRequest

Warm = Callable[[Engine, list[int], str], None]
TINY = PROFILES["tiny"]  # 6 ms step overhead, 36 us per prompt token, 1,024 tokens per step


def request(request_id: str, tokens: list[int]) -> WorkloadRequest:
    return WorkloadRequest(request_id, 0.0, "", tokens, 4)


def test_predicted_ttft_of_an_idle_engine_is_its_prefill_steps() -> None:
    engine = Engine(TINY)
    # 2,048 tokens: 2 steps of 1,024 -> 2 x 6 ms + 2,048 x 36 us
    assert predicted_ttft(engine, 2048, request("a", [1])) == pytest.approx(2 * 0.006 + 2048 * 36e-6)


def test_a_full_batch_waits_for_the_first_running_request_to_end() -> None:
    engine = Engine(TINY.with_overrides(max_num_seqs=1))
    engine.add_request(EngineRequest("busy", list(range(16)), max_tokens=50))
    engine.step(0.0)  # admitted and prefilled: 49 tokens to go, one decoding sequence
    step = 0.006 + 30e-6
    assert predicted_ttft(engine, 100, request("b", [1])) == pytest.approx(step + 100 * 36e-6 + 49 * step)


def test_the_cached_engine_wins_when_queues_are_equal_and_a_backlog_outweighs_the_cache(warmed: Warm) -> None:
    prompt = list(range(500))
    engines = [EngineView(i, Engine(TINY)) for i in range(2)]
    warmed(engines[1].engine, prompt, "warm")
    oracle = Oracle(seed=0)
    assert oracle.route(request("a", prompt), engines, 0.0) == 1
    # Pile uncached work on engine 1: 3 queued requests of 1,000 new tokens make it slower than computing the
    # 500 tokens on idle engine 0, even counting that work 4 times.
    for n in range(3):
        engines[1].engine.add_request(EngineRequest(f"q{n}", list(range(10_000 * (n + 1), 10_000 * (n + 1) + 1000)), 4))
    assert oracle.route(request("b", prompt), engines, 0.0) == 0


def test_blocks_queued_on_an_engine_count_as_cached_for_the_next_request() -> None:
    prompt = list(range(300))
    engines = [EngineView(i, Engine(TINY)) for i in range(3)]
    oracle = Oracle(seed=0)
    first = oracle.route(request("a", prompt), engines, 0.0)
    engines[first].engine.add_request(EngineRequest("a", prompt, 4))  # what the harness does with the answer
    # Nothing is computed yet, but engine `first` will hold the prefix by the time it reaches the next request.
    assert oracle.route(request("b", prompt), engines, 0.0) == first
    oracle.on_tokens(RequestRecord("a", first, 0.0, 300), 1, 0.1)
    oracle.on_finish(RequestRecord("b", first, 0.0, 300), 0.2)
    assert all(not pending.blocks for pending in oracle._pending)
