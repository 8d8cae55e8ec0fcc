from __future__ import annotations

from kvroute.bench.overhead.scheduling import default_profiles, endpoints, run_grid


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
