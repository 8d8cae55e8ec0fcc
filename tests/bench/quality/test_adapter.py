from __future__ import annotations

from collections.abc import Sequence

from kvroute.bench.quality.adapter import SCRAPE_INTERVAL_S, SchedulerPolicy, endpoints_for
from kvroute.bench.quality.generators import Workload
from kvroute.bench.quality.policies.configs import LLMD_BLEND, RANDOM, ROUND_ROBIN, Recipe
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.framework import EndpointMetrics
from kvroute.router.plugins.scorers.active_blocks import ActiveBlocksScorer
from kvroute.router.plugins.scorers.predicted_latency import PredictedLatencyScorer
from kvroute.router.plugins.scorers.token_load import TokenLoadScorer
from kvroute.simulator.des.harness import EngineView, RequestRecord, SimulationResult, simulate

RECIPE_WITH_LOAD_SCORERS = Recipe(
    (("prefix-cache-scorer", 3.0), ("token-load-scorer", 2.0), ("active-blocks-scorer", 1.0))
).document(disaggregated=False)


def run(workload: Workload, policy: SchedulerPolicy) -> SimulationResult:
    return simulate(
        workload.fleet.profiles,
        workload.requests,
        policy.route,
        listener=policy,
        tick_interval=policy.tick_interval,
    )


def rows(records: Sequence[RequestRecord]) -> list[tuple[object, ...]]:
    return [(r.request_id, r.engine, r.prefill_engine, r.first_token_time, r.finish_time) for r in records]


def test_the_same_seed_gives_the_same_decisions_and_another_seed_may_not(tiny: Workload) -> None:
    document = LLMD_BLEND.document(disaggregated=False)
    first = run(tiny, SchedulerPolicy(document, tiny.fleet, seed=5))
    again = run(tiny, SchedulerPolicy(document, tiny.fleet, seed=5))
    assert rows(first.records) == rows(again.records)
    random_document = RANDOM.document(disaggregated=False)
    random_first = run(tiny, SchedulerPolicy(random_document, tiny.fleet, seed=1))
    random_other = run(tiny, SchedulerPolicy(random_document, tiny.fleet, seed=2))
    assert [r.engine for r in random_first.records] != [r.engine for r in random_other.records]


def test_every_request_completes_and_the_router_state_drains(tiny: Workload) -> None:
    policy = SchedulerPolicy(recommended_config_text(), tiny.fleet, seed=0)
    result = run(tiny, policy)
    assert result.unfinished == 0
    assert policy.in_flight == 0
    latency = next(p for p in policy.config.plugins.values() if isinstance(p, PredictedLatencyScorer))
    assert len(latency.loads) == 0
    blend = SchedulerPolicy(RECIPE_WITH_LOAD_SCORERS, tiny.fleet, seed=0)
    assert run(tiny, blend).unfinished == 0
    plugins = blend.config.plugins
    token_load = next(p for p in plugins.values() if isinstance(p, TokenLoadScorer))
    active_blocks = next(p for p in plugins.values() if isinstance(p, ActiveBlocksScorer))
    for endpoint in blend.endpoints:
        assert token_load.in_flight_tokens(endpoint.id) == 0
        assert active_blocks.active_blocks(endpoint.id) == 0


def test_the_run_reports_how_far_the_predicted_ttfts_were_from_the_simulated_ones(tiny: Workload) -> None:
    policy = SchedulerPolicy(recommended_config_text(), tiny.fleet, seed=0)
    run(tiny, policy)
    metrics = policy.extra_metrics()
    assert set(metrics) == {"ttft_prediction_error_p50_s", "ttft_prediction_error_p90_s", "ttft_prediction_bias_s"}
    # The tiny profile's steps last 6-45 ms: a median error of a step or so is what the model should reach.
    assert 0 <= metrics["ttft_prediction_error_p50_s"] <= metrics["ttft_prediction_error_p90_s"]
    assert metrics["ttft_prediction_error_p50_s"] < 0.05
    without = SchedulerPolicy(LLMD_BLEND.document(disaggregated=False), tiny.fleet, seed=0)
    run(tiny, without)
    assert without.extra_metrics() == {}


def test_metrics_are_a_scrape_of_the_engines_taken_every_50_ms(tiny: Workload) -> None:
    policy = SchedulerPolicy(ROUND_ROBIN.document(disaggregated=False), tiny.fleet, seed=0)
    scrapes: list[tuple[float, EndpointMetrics]] = []
    ticks = policy.on_tick

    def recording_tick(engines: Sequence[EngineView], now: float) -> None:
        ticks(engines, now)
        scrapes.append((now, policy.endpoints[0].metrics))

    policy.on_tick = recording_tick  # type: ignore[method-assign]
    run(tiny, policy)
    assert SCRAPE_INTERVAL_S == 0.05
    assert [round(t, 6) for t, _ in scrapes[:3]] == [0.0, 0.05, 0.1]
    assert all(m.scraped_at == t and not m.stale for t, m in scrapes)
    assert all(m.num_gpu_blocks == 256 and m.block_size == 16 and m.lora.max_loras == 4 for _, m in scrapes)
    assert any(m.running > 0 for _, m in scrapes) and any(m.kv_usage > 0 for _, m in scrapes)


def test_endpoints_carry_their_role_on_a_pd_fleet(tiny_pd: Workload) -> None:
    endpoints = endpoints_for(tiny_pd.fleet)
    assert [e.id for e in endpoints] == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]
    assert [e.role.value for e in endpoints] == ["prefill", "prefill", "decode", "decode"]


def test_a_pd_config_disaggregates_through_the_real_handler(tiny_pd: Workload) -> None:
    policy = SchedulerPolicy(recommended_config_text(disaggregated=True), tiny_pd.fleet, seed=0)
    result = run(tiny_pd, policy)
    assert result.unfinished == 0 and policy.in_flight == 0
    assert {r.prefill_engine for r in result.records} <= {0, 1, None}
    assert {r.engine for r in result.records} <= {2, 3}
    # The recommended handler decides by predicted latency: some requests are prefilled apart, some kept whole.
    assert any(r.prefill_engine is not None for r in result.records)
    threshold = SchedulerPolicy(LLMD_BLEND.document(disaggregated=True), tiny_pd.fleet, seed=0)
    everything = run(tiny_pd, threshold)
    assert all(r.prefill_engine is not None for r in everything.records)  # threshold 0: always disaggregated
