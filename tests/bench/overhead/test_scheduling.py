from __future__ import annotations

import pytest

from kvroute.bench.overhead.scheduling import (
    bench_request,
    default_profiles,
    endpoints,
    measure,
    prepared,
    prompt_text,
    run_grid,
)
from kvroute.router.framework import CycleState
from kvroute.router.plugins.prefix.match import prefix_match_key


def test_grid_has_one_cell_per_profile_endpoint_count_and_prompt_length() -> None:
    cells = run_grid(default_profiles(), (4, 16), (1_000, 8_000), budget=0.005, min_iterations=10, max_iterations=40)

    assert [(c.profile, c.endpoints, c.chars) for c in cells] == [
        (profile, n, chars) for profile in ("default", "recommended") for n in (4, 16) for chars in (1_000, 8_000)
    ]
    for cell in cells:
        assert 10 <= cell.iterations <= 40
        assert 0 < cell.p50_us <= cell.p99_us
        assert cell.cpu_p99_us > 0


def test_benchmark_endpoints_are_distinct_and_report_fresh_idle_metrics() -> None:
    pool = endpoints(300)
    assert len({e.id for e in pool}) == 300
    assert all(not e.metrics.stale and e.metrics.waiting == 0 and e.metrics.kv_usage == 0 for e in pool)


@pytest.mark.parametrize(
    ("profile", "prefix_plugin"),
    [("default", "prefix-cache-scorer"), ("recommended", "approx-prefix-cache-producer")],
)
def test_every_endpoint_holds_the_whole_prompt_whichever_plugin_keeps_the_prefix_index(
    profile: str, prefix_plugin: str
) -> None:
    pool = endpoints(20)
    request = bench_request(prompt_text(5_000))
    config = prepared(default_profiles()[profile], request, pool)

    state = CycleState()
    config.scheduler.schedule(request, pool, state)
    info = state.require(prefix_match_key(prefix_plugin))
    assert info.total_blocks > 1
    assert info.matched_blocks == {e.id: info.total_blocks for e in pool}


def test_prompts_of_one_seed_are_prefixes_of_each_other() -> None:
    assert prompt_text(8_000)[:1_000] == prompt_text(1_000)
    assert len(prompt_text(1_000)) == 1_000
    assert prompt_text(1_000) != prompt_text(1_000, seed=2)


def test_measure_times_every_call_and_orders_its_percentiles() -> None:
    calls: list[int] = []
    p50, p99, cpu_p99 = measure(lambda: calls.append(sum(range(2_000))), 200)
    assert len(calls) == 200 + 20  # a tenth of the timed calls, untimed, first
    assert 0 < p50 <= p99
    assert cpu_p99 > 0
