from __future__ import annotations

import math

import pytest

from kvroute.bench.quality.metrics import percentile, summarise
from kvroute.bench.quality.workloads import Fleet
from kvroute.simulator.des.harness import RequestRecord, SimulationResult
from kvroute.simulator.engine.profiles import PROFILES


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [5.0, 9.0, 10.0, 10.0]
    assert math.isnan(percentile([], 0.5))


def test_summary_of_hand_made_records() -> None:
    tiny = PROFILES["tiny"]
    fleet = Fleet((tiny,) * 4, ("prefill", "prefill", "decode", "decode"))
    records = [
        RequestRecord("a", 2, 0.0, 100, first_token_time=0.5, finish_time=1.5, cached_tokens=10, output_tokens=11),
        RequestRecord("b", 2, 1.0, 100, first_token_time=1.2, finish_time=2.0, cached_tokens=0, output_tokens=5),
        RequestRecord("c", 3, 1.0, 200, first_token_time=1.1, finish_time=3.0, cached_tokens=0, output_tokens=20),
    ]
    records[2].prefill_engine, records[2].prefill_cached_tokens = 0, 150
    summary = summarise(SimulationResult(records, duration=3.0, engine_preemptions=[0, 1, 0, 2]), fleet)
    assert summary["ttft_p50_s"] == pytest.approx(0.2)
    assert summary["ttft_p90_s"] == pytest.approx(0.5)
    assert summary["e2e_p90_s"] == pytest.approx(2.0)
    assert summary["tpot_p50_s"] == pytest.approx(0.1)  # (1.5 - 0.5) / 10, (2.0 - 1.2) / 4, (3.0 - 1.1) / 19
    assert summary["output_tokens_per_s"] == pytest.approx(36 / 3.0)
    # Cache hits where the prompt was computed: 10 + 0 on the decode engines, 150 on the prefill engine.
    assert summary["prefix_hit_rate"] == pytest.approx(160 / 400)
    assert summary["engine_requests"] == [1, 0, 2, 1]
    assert summary["load_imbalance"] == pytest.approx(2.0)  # prefill pool: 1 and 0 requests, mean 0.5
    assert summary["preemptions"] == 3
    assert summary["disaggregated"] == pytest.approx(0.333333)
