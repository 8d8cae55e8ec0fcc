from __future__ import annotations

from collections.abc import Callable

from kvroute.bench.quality.generators import Workload
from kvroute.bench.quality.policies.catalog import lookup
from kvroute.bench.quality.policies.configs import LLMD_PRECISE, with_precise_prefix
from kvroute.bench.quality.policies.precise import KV_EVENTS_DELAY_S, KVEventsSchedulerPolicy
from kvroute.bench.quality.runner import run_one
from kvroute.router.framework import ApiKind, CycleState, LLMRequest
from kvroute.router.plugins.prefix.match import prefix_match_key
from kvroute.simulator.des.harness import EngineView
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.tokenizer import Tokenizer

Warm = Callable[[Engine, list[int], str], None]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def test_the_routers_precise_scorer_follows_the_engines_events_after_their_delay(tiny: Workload, warmed: Warm) -> None:
    policy = KVEventsSchedulerPolicy(with_precise_prefix(LLMD_PRECISE.document(disaggregated=False)), tiny.fleet, 0)
    engines = [EngineView(i, Engine(p, record_kv_events=True)) for i, p in enumerate(tiny.fleet.profiles)]
    prompt = "abcd" * 160  # 160 tokens, 10 blocks of 16
    warmed(engines[2].engine, Tokenizer().encode(prompt[: 4 * 96]), "warm")  # 6 blocks cached on engine 2
    policy.on_kv_events(2, engines[2].engine.drain_kv_events(), 1.0)
    scorer = policy.config.plugins["prefix-cache-scorer"]
    assert scorer.type_name == "precise-prefix-cache-scorer"

    def scores(now: float) -> dict[str, float]:
        policy.on_tick(engines, now)  # delivers what is due
        request = LLMRequest("r", MODEL, ApiKind.COMPLETIONS, prompt, {}, {})
        return scorer.score(CycleState(), request, policy.endpoints)  # type: ignore[attr-defined, no-any-return]

    assert scores(1.0)["10.0.0.3:8000"] == 0.0  # published, not yet received
    assert scores(1.0 + KV_EVENTS_DELAY_S) == {"10.0.0.1:8000": 0.0, "10.0.0.2:8000": 0.0, "10.0.0.3:8000": 0.6}
    state = CycleState()
    scorer.score(state, LLMRequest("s", MODEL, ApiKind.COMPLETIONS, prompt, {}, {}), policy.endpoints)  # type: ignore[attr-defined]
    info = state.require(prefix_match_key("prefix-cache-scorer"))
    assert info.matched_blocks["10.0.0.3:8000"] == 6


def test_precise_policies_run_on_recorded_events_and_keep_affinity(tiny: Workload) -> None:
    for name in ("llmd-precise", "kvroute-precise", "kvroute-precise@3"):
        info = lookup(name)
        assert info.make(tiny.fleet, 0).needs_kv_events
        metrics = run_one(tiny, info, 0)
        assert metrics["requests"] == 60 and metrics["prefix_hit_rate"] > 0.5, (name, metrics)
