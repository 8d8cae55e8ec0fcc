from __future__ import annotations

from collections.abc import Callable

from kvroute.bench.quality.generators import Workload
from kvroute.bench.quality.policies.configs import LLMD_PRECISE
from kvroute.bench.quality.policies.precise import PreciseSchedulerPolicy
from kvroute.router.framework import ApiKind, CycleState, LLMRequest
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.simulator.des.harness import EngineView
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.tokenizer import Tokenizer

Warm = Callable[[Engine, list[int], str], None]


def test_the_scorer_reads_each_engines_true_cache(tiny: Workload, warmed: Warm) -> None:
    policy = PreciseSchedulerPolicy(LLMD_PRECISE.document(disaggregated=False), tiny.fleet, seed=0)
    engines = [EngineView(i, Engine(p)) for i, p in enumerate(tiny.fleet.profiles)]
    prompt = "abcd" * 160  # 160 tokens, 10 blocks of 16
    warmed(engines[2].engine, Tokenizer().encode(prompt[: 4 * 96]), "warm")  # 6 blocks cached on engine 2
    policy.route(tiny.requests[0], engines, 0.0)  # binds the engines
    scorer = policy.config.plugins["precise-prefix-cache-scorer"]
    state = CycleState()
    request = LLMRequest("r", "meta-llama/Llama-3.1-8B-Instruct", ApiKind.COMPLETIONS, prompt, {}, {})
    scores = scorer.score(state, request, policy.endpoints)  # type: ignore[attr-defined]
    assert scores == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 0.0, "10.0.0.3:8000": 0.6}
    info = state.require(prefix_match_key("precise-prefix-cache-scorer"))
    assert info.matched_blocks["10.0.0.3:8000"] == 6 and info.block_chars == 64
