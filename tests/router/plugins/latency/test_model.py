from dataclasses import replace

import pytest

from kvroute.router.plugins.latency.model import (
    EngineShape,
    StepCosts,
    linear,
    predict_ttft,
    prefill_steps,
    step_features,
    ttft_features,
)

# The 8B profile of the module docstring: 36 us per prompt token, 6 ms per step, 30 us per decoding sequence,
# 0.039 us per context token, 8,192 tokens per step; and 2 ms per request outside the engine's steps.
COSTS = StepCosts(36e-6, 0.006, 30e-6, 0.039e-6, 0.002)
SHAPE = EngineShape(max_batched_tokens=8192)


def test_the_coefficients_are_in_feature_order_with_the_request_overhead_last() -> None:
    assert COSTS.as_tuple() == (36e-6, 0.006, 30e-6, 0.039e-6, 0.002)


def test_the_docstring_example_is_232_8_ms_with_no_request_overhead() -> None:
    assert ttft_features(4000, 2000, 100, 200_000, SHAPE) == (6000, 1, 100, 200_000, 1)
    # (6 + 3 + 7.8) ms of one step + 216 ms of prefill + 0
    assert predict_ttft(replace(COSTS, request_overhead=0.0), 4000, 2000, 100, 200_000, SHAPE) == pytest.approx(0.2328)
    # the request overhead is paid once on top: 232.8 + 2 ms
    assert predict_ttft(COSTS, 4000, 2000, 100, 200_000, SHAPE) == pytest.approx(0.2348)


def test_work_beyond_one_step_budget_pays_the_step_costs_once_per_step_and_the_request_overhead_once() -> None:
    # budget 8192 - 192 = 8000 prompt tokens per step; 24,000 tokens of work take exactly 3 steps
    assert ttft_features(20_000, 4000, 192, 100_000, SHAPE) == (24_000, 3, 576, 300_000, 1)
    # 3 * (6 + 5.76 + 3.9) ms + 24,000 * 36 us + 2 ms = 46.98 + 864 + 2 ms
    assert predict_ttft(COSTS, 20_000, 4000, 192, 100_000, SHAPE) == pytest.approx(0.91298)
    # one token more needs a fourth step
    assert ttft_features(20_000, 4001, 192, 100_000, SHAPE)[1] == 4


def test_wait_steps_are_decode_only_steps_before_the_prefill() -> None:
    features = ttft_features(0, 1000, 10, 5000, SHAPE, wait_steps=2.5)
    assert features == (1000, 3.5, 35, 17_500, 1)
    # 1,000 * 36 us + 3.5 * (6 ms + 10 * 30 us + 5,000 * 0.039 us) + 2 ms = 36 + 22.7325 + 2 ms
    assert linear(COSTS.as_tuple(), features) == pytest.approx(0.0607325)
    assert predict_ttft(COSTS, 0, 1000, 10, 5000, SHAPE, 2.5) == pytest.approx(0.0607325)


def test_the_step_count_is_at_least_one_and_the_budget_at_least_one_token() -> None:
    assert prefill_steps(0, 0, SHAPE) == 1  # a fully cached prompt still waits one step for its first token
    assert prefill_steps(10, 9000, SHAPE) == 10  # more decodes than the budget: one prompt token per step
    assert prefill_steps(8192, 0, EngineShape(max_batched_tokens=4096)) == 2
    # a fully cached prompt on an idle engine: one step and the request overhead
    assert predict_ttft(COSTS, 0, 0, 0, 0, SHAPE) == pytest.approx(0.006 + 0.002)


def test_one_step_is_priced_with_its_prefill_tokens_beside_the_decodes_without_the_request_overhead() -> None:
    assert step_features(512, 8, 4096) == (512, 1, 8, 4096, 0)
    # 512 * 36 us + 6 ms + 8 * 30 us + 4,096 * 0.039 us (an inter-token step is inside one request: no overhead)
    assert linear(COSTS.as_tuple(), step_features(512, 8, 4096)) == pytest.approx(0.024831744)


def test_linear_rejects_features_of_another_length() -> None:
    with pytest.raises(ValueError):
        linear(COSTS.as_tuple(), (1.0, 1.0, 1.0, 1.0))  # type: ignore[arg-type]
