from __future__ import annotations

from kvroute.bench.quality.policies.sglang import SGLangCacheAware
from kvroute.simulator.des.harness import EngineView, RequestRecord, WorkloadRequest
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.profiles import PROFILES

SYSTEM = "s" * 700


def views(n: int) -> list[EngineView]:
    return [EngineView(i, Engine(PROFILES["tiny"])) for i in range(n)]


def request(n: int, text: str) -> WorkloadRequest:
    return WorkloadRequest(f"r{n}", 0.0, text, [1] * 4, 1)


def finish(policy: SGLangCacheAware, n: int) -> None:
    policy.on_finish(RequestRecord(f"r{n}", 0, 0.0, 4), 0.0)


def test_a_match_above_the_threshold_follows_the_cache_and_a_miss_goes_to_the_least_loaded() -> None:
    policy, engines = SGLangCacheAware(), views(3)
    assert policy.route(request(0, SYSTEM + "q0"), engines, 0.0) == 0  # empty tree: a miss; all loads 0 -> first
    assert policy.route(request(1, "x" * 100), engines, 0.0) == 1  # miss: least loaded (worker 0 has 1)
    # 700 of 800 characters match worker 0's text: 0.875 > 0.3, so worker 0 although it is the busiest.
    assert policy.route(request(2, SYSTEM + "q" * 100), engines, 0.0) == 0
    # 700 of 3,000 characters (0.23 <= 0.3) is a miss: least loaded, worker 2.
    assert policy.route(request(3, SYSTEM + "z" * 2300), engines, 0.0) == 2
    assert policy.loads == [2, 1, 1]
    finish(policy, 0)
    finish(policy, 2)
    assert policy.loads == [0, 1, 1]


def test_imbalance_overrides_the_cache_only_beyond_both_thresholds() -> None:
    policy = SGLangCacheAware()
    policy.loads = [70, 5]
    # 70 - 5 = 65 > 64 and 70 > 5 * 1.5: imbalanced -> least loaded, whatever the cache says.
    policy.tree.insert(SYSTEM, 0, now=0.0)
    assert policy.choose(SYSTEM, 0.0) == 1
    # 64 apart is not more than 64: the cache decides.
    policy.loads = [69, 5]
    assert policy.choose(SYSTEM, 0.0) == 0
    # 100 apart but 200 < 150 * 1.5: balanced enough, the cache decides.
    policy.loads = [200, 150]
    assert policy.choose(SYSTEM, 0.0) == 0


def test_the_text_is_inserted_under_the_chosen_worker_even_when_balancing() -> None:
    policy, engines = SGLangCacheAware(), views(2)
    policy.loads = [100, 0]
    policy.tree.insert(SYSTEM, 0, now=0.0)
    assert policy.route(request(0, SYSTEM), engines, 1.0) == 1
    assert policy.tree.prefix_match(SYSTEM, 2.0) == (700, 1)
