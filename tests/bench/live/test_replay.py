from __future__ import annotations

import pytest

from kvroute.bench.live.replay import LiveWorkloadError, cut_fleet, live_workload
from kvroute.bench.quality.generators import build
from kvroute.bench.quality.workloads import parse_workload

WORKLOAD = """
name: tiny-shared
description: two groups
seed: 3
fleet:
  engines: 6
  profile: llama-3.1-8b-h100
  overrides: {num_gpu_blocks: 900}
  slow_engines: 2
  slow_factor: 2.0
arrival:
  - {process: poisson, rate: 20, count: 40}
generator: {kind: shared-prefix, groups: 2, system_tokens: 64, question_tokens: 16, output_tokens: 4}
"""


def spec(text: str = WORKLOAD):
    return parse_workload(text)


def test_the_plan_is_the_harness_requests_in_order_with_their_text_and_output_length() -> None:
    built = build(spec(), 7)
    live = live_workload(spec(), 7)
    assert len(live.plan) == len(built.requests) == 40
    for planned, request in zip(live.plan, built.requests, strict=True):
        assert planned.at == pytest.approx(request.arrival_time)
        assert planned.body == {"model": live.plan[0].body["model"], "prompt": request.prompt, "max_tokens": 4}
    assert live.harness.requests == built.requests


def test_engines_get_the_profile_the_kv_size_and_slow_ones_a_longer_time_scale() -> None:
    live = live_workload(spec(), 7, time_scale=0.5)
    assert live.engines == 6
    first, last = live.engine_args[0], live.engine_args[-1]
    assert first[first.index("--profile") + 1] == "llama-3.1-8b-h100"
    assert first[first.index("--num-gpu-blocks") + 1] == "900"
    assert [a[a.index("--time-scale") + 1] for a in live.engine_args] == ["0.5"] * 4 + ["1"] * 2
    assert live.plan[-1].at == pytest.approx(build(spec(), 7).requests[-1].arrival_time * 0.5)
    assert last == live.engine_args[-2]


def test_a_larger_fleet_is_cut_and_its_arrivals_stretched_so_each_engine_meets_the_same_rate() -> None:
    live = live_workload(spec(), 7, max_sims=3)
    built = build(spec(), 7)
    assert live.engines == 3
    assert live.info["slow_engines"] == 1
    assert live.info["live"]["arrivals_stretched"] == pytest.approx(2.0)
    assert live.plan[-1].at == pytest.approx(built.requests[-1].arrival_time * 2)
    assert len(live.harness.fleet.profiles) == 3
    assert live.harness.requests[-1].arrival_time == pytest.approx(live.plan[-1].at)


@pytest.mark.parametrize(
    ("engines", "slow", "cap", "expected"),
    [(6, 2, 8, (6, 2)), (16, 2, 8, (8, 1)), (16, 0, 8, (8, 0)), (4, 4, 2, (2, 1)), (13, 1, 8, (8, 1))],
)
def test_cut_fleet_keeps_slow_engines_in_proportion(engines: int, slow: int, cap: int, expected: tuple) -> None:
    assert cut_fleet(engines, slow, cap) == expected


def test_max_requests_and_duration_keep_the_first_arrivals() -> None:
    built = build(spec(), 7)
    live = live_workload(spec(), 7, max_requests=10)
    assert [p.body["prompt"] for p in live.plan] == [r.prompt for r in built.requests[:10]]
    cutoff = built.requests[20].arrival_time
    assert len(live_workload(spec(), 7, duration=cutoff).plan) == 21
    assert live.info["requests"] == 10
    assert live.info["live"]["requests_in_workload"] == 40


def test_lora_requests_name_their_adapter_and_every_engine_serves_the_adapters() -> None:
    text = WORKLOAD.replace("output_tokens: 4}", "output_tokens: 4, lora: {adapters: 3, zipf: 1.0}}")
    live = live_workload(spec(text), 7)
    assert live.lora
    adapters = {p.body["model"] for p in live.plan}
    assert adapters <= {"adapter-0", "adapter-1", "adapter-2"}
    flags = live.engine_args[0]
    assert set(flags[flags.index("--lora-modules") + 1 :]) >= adapters


def test_workloads_that_cannot_run_live_are_refused_with_the_reason() -> None:
    pd = WORKLOAD.replace("slow_engines: 2", "slow_engines: 0\n  prefill_engines: 2")
    with pytest.raises(LiveWorkloadError, match="P/D workloads are not replayed live"):
        live_workload(spec(pd), 7)
    other = WORKLOAD.replace("{num_gpu_blocks: 900}", "{num_gpu_blocks: 900, step_overhead_s: 0.01}")
    with pytest.raises(LiveWorkloadError, match=r"fleet\.overrides step_overhead_s cannot be set"):
        live_workload(spec(other), 7)
