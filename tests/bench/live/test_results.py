from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute.bench.live.fidelity import compare, spread_distance
from kvroute.bench.live.harness import RowResult
from kvroute.bench.live.replay import live_workload
from kvroute.bench.live.results import markdown, row_metrics, write_all
from kvroute.bench.live.servers import ServerCounters
from kvroute.bench.loadgen import Outcome
from kvroute.bench.quality.workloads import parse_workload

WORKLOAD = parse_workload(
    """
name: tiny
description: two groups
seed: 3
fleet: {engines: 2, profile: llama-3.1-8b-h100, overrides: {num_gpu_blocks: 900}}
arrival: [{process: poisson, rate: 20, count: 30}]
generator: {kind: shared-prefix, groups: 2, system_tokens: 64, question_tokens: 16, output_tokens: 4}
"""
)


def row(name: str, ttfts: list[float], servers: list[ServerCounters], **extra: object) -> RowResult:
    trace = [Outcome(status=200, ttft=t, e2e=t + 0.1) for t in ttfts]
    return RowResult(name, trace=trace, servers=servers, makespan=2.0, trace_wall=2.0, **extra)  # type: ignore[arg-type]


def test_row_metrics_take_latency_from_the_client_and_the_rest_from_the_servers() -> None:
    servers = [ServerCounters(30, 1000, 600, 1, 120), ServerCounters(10, 1000, 200, 0, 40)]
    probe = [Outcome(status=200, ttft=0.012)]
    direct = row("direct", [0.1], [], probe=[Outcome(status=200, ttft=0.010)])
    metrics = row_metrics(
        row("kvroute", [i / 100 for i in range(1, 11)], servers, probe=probe, router_cpu=0.5, idle_cpu=0.05), direct
    )
    assert metrics["ttft_p50_s"] == pytest.approx(0.05)
    assert metrics["ttft_p90_s"] == pytest.approx(0.09)
    assert metrics["e2e_p90_s"] == pytest.approx(0.19)
    assert metrics["prefix_hit_rate"] == pytest.approx(0.4)
    assert metrics["engine_requests"] == [30, 10]
    assert metrics["load_imbalance"] == pytest.approx(1.5)
    assert metrics["output_tokens_per_s"] == pytest.approx(80)
    assert metrics["preemptions"] == 1
    assert metrics["router_cpu_ms_per_request"] == pytest.approx((0.5 - 0.05 * 2.0) * 1e3 / 10)
    assert metrics["added_ttft_p50_ms"] == pytest.approx(2.0)
    assert (metrics["errors"], metrics["error"]) == (0, None)


def test_a_row_that_did_not_run_has_no_numbers_and_says_why() -> None:
    metrics = row_metrics(RowResult("dynamo-kv", error="RouterUnavailable: not installed"), None)
    assert metrics["error"] == "RouterUnavailable: not installed"
    assert metrics["ttft_p90_s"] is None and metrics["prefix_hit_rate"] is None


def test_spread_distance_ignores_which_server_took_which_share() -> None:
    assert spread_distance([30, 10], [10, 30]) == 0
    assert spread_distance([40, 0], [20, 20]) == pytest.approx(0.5)


def test_fidelity_runs_each_model_on_the_same_requests_and_the_report_shows_it(tmp_path: Path) -> None:
    live = live_workload(WORKLOAD, 1, time_scale=0.5)
    servers = [ServerCounters(15, 1200, 700, 0, 60), ServerCounters(15, 1200, 700, 0, 60)]
    rows = {
        "direct": row_metrics(row("direct", [0.02] * 30, servers), None),
        "kvroute": row_metrics(row("kvroute", [0.01] * 30, servers), None),
        "sglang-router": row_metrics(row("sglang-router", [0.03] * 30, servers), None),
        "dynamo-approx": row_metrics(row("dynamo-approx", [0.03] * 30, servers), None),
    }
    found = compare(live, rows, seed=1)
    assert list(found) == ["direct", "kvroute", "sglang-router"]  # Dynamo's approximate mode has no model
    assert found["direct"]["model"] == "round-robin"
    assert found["sglang-router"]["model"] == "sglang-cache-aware"
    assert found["kvroute"]["ttft_p90_live_s"] == pytest.approx(0.02)  # 0.01 s at time scale 0.5
    assert 0 < found["kvroute"]["ttft_p90_model_s"] < 1
    results = {
        "benchmark": "live",
        "seed": 1,
        "workloads": {"tiny": live.info},
        "policies": list(rows),
        "results": {"tiny": rows},
        "fidelity": {"tiny": found},
    }
    text = markdown(results, "kvroute bench live --workloads tiny.yaml")
    assert "| tiny | 0.020 | **0.010** | 0.030 | 0.030 | tie (0.50x direct) |" in text
    assert "| tiny | sglang-router | sglang-cache-aware |" in text
    written = write_all(results, tmp_path, "cmd", plots=True)
    assert {p.name for p in written} >= {"results.json", "results.md", "ttft.png", "load.png"}
    assert json.loads((tmp_path / "results.json").read_text())["fidelity"]["tiny"]["kvroute"]["model"] == "kvroute"
