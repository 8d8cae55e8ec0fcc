from __future__ import annotations

import json
import math

import pytest

from kvroute.bench.live.harness import DIRECT, Fleet, RowResult
from kvroute.bench.live.report import markdown, percentile, summarize_all
from kvroute.bench.loadgen import Outcome

FLEET = Fleet(("127.0.0.2", "127.0.0.3"), 18100)


def outcome(ttft_ms: float, e2e_ms: float, pod: int, *, prompt: int = 100, cached: int = 0) -> Outcome:
    return Outcome(
        status=200,
        ttft=ttft_ms / 1e3,
        e2e=e2e_ms / 1e3,
        pod=FLEET.pod(pod),
        prompt_tokens=prompt,
        cached_tokens=cached,
        output_tokens=10,
    )


def probe(*ttfts_ms: float) -> list[Outcome]:
    return [outcome(t, t, 0) for t in ttfts_ms]


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.9) == 5.0
    assert percentile(values, 0.2) == 1.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_summary_numbers_are_computed_from_the_outcomes() -> None:
    direct = RowResult(DIRECT, trace=[outcome(10, 100, 0), outcome(30, 300, 1)], probe=probe(10, 10, 12), makespan=2.0)
    kvroute = RowResult(
        "kvroute",
        version="0.1.0",
        trace=[
            outcome(10, 100, 0, cached=80),
            outcome(20, 200, 0, cached=40),
            outcome(30, 300, 1),
            Outcome(status=503, error="no endpoint"),
        ],
        probe=probe(11, 12, 14),
        makespan=2.0,
        trace_wall=2.5,
        router_cpu=0.5,  # CPU seconds over the 2.5 s trace
        probe_cpu=0.07,  # CPU seconds over the 1 s probe
        probe_wall=1.0,
        idle_cpu=0.04,  # 4% of a core when idle
    )

    direct_summary, summary = summarize_all([direct, kvroute], FLEET)

    assert (summary.requests, summary.errors) == (4, 1)
    assert (summary.ttft_p50_ms, summary.ttft_p90_ms, summary.e2e_p99_ms) == pytest.approx((20, 30, 300))
    assert summary.requests_per_s == pytest.approx(3 / 2.0)  # answered requests over the makespan
    assert summary.output_tokens_per_s == pytest.approx(30 / 2.0)
    assert summary.prefix_hit_rate == pytest.approx(120 / 300)
    assert summary.shares == pytest.approx((2 / 3, 1 / 3))
    # Probe TTFT p50 12 ms against direct's 10 ms; p90 14 against 12.
    assert (summary.added_p50_ms, summary.added_p90_ms) == pytest.approx((2.0, 2.0))
    assert summary.idle_cpu_percent == pytest.approx(4.0)
    assert summary.trace_cpu_percent == pytest.approx(20.0)
    # (0.5 s - 0.04 x 2.5 s) / 4 requests = 100 ms per request above the idle floor.
    assert summary.cpu_ms_per_request == pytest.approx(100.0)
    # (0.07 s - 0.04 x 1 s) / 3 probe requests = 10 ms per request.
    assert summary.probe_cpu_ms_per_request == pytest.approx(10.0)
    assert direct_summary.added_p50_ms is None
    assert direct_summary.cpu_ms_per_request is None
    assert direct_summary.probe_cpu_ms_per_request is None
    assert "| 4 / 20 | 10.00 / 100.00 | 1 of 4 |" in markdown([summary])


def test_table_has_one_row_per_router_and_reports_the_one_that_did_not_run() -> None:
    direct = RowResult(DIRECT, trace=[outcome(10, 100, 0)], probe=probe(10), makespan=1.0)
    kvroute = RowResult("kvroute", "0.1.0", trace=[outcome(12, 100, 1)], probe=probe(11), makespan=1.0)
    missing = RowResult("vllm-router", error="RouterUnavailable: vllm-router is not installed\n(pip | x)")

    table = markdown(summarize_all([direct, kvroute, missing], FLEET))
    lines = table.splitlines()

    assert len(lines) == 5
    columns = lines[0].count("|")
    assert all(line.count("|") == columns for line in lines)
    assert lines[2].startswith("| direct | 10.0 | 10.0 | 10.0 | 100.0 | 100.0 | 1.00 | 10 | 0.0% | 100% / 0% | — |")
    assert lines[3].startswith("| kvroute 0.1.0 | 12.0 |")
    assert "| +1.00 / +1.00 |" in lines[3]
    assert lines[4].startswith("| vllm-router | — |")
    assert lines[4].endswith("| did not run: RouterUnavailable: vllm-router is not installed (pip / x) |")


def test_summary_json_has_no_nan() -> None:
    failed = RowResult("sglang-router", error="TimeoutError: not ready")
    (summary,) = summarize_all([failed], FLEET)
    document = summary.to_json()
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text)["error"] == "TimeoutError: not ready"
    assert document["ttft_p50_ms"] is None
    assert document["shares"] == [None, None]
