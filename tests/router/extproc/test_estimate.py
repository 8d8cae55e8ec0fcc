"""The output-token estimate of the light response mode, with hand-computed values."""

from __future__ import annotations

import pytest

from kvroute.router.extproc.estimate import DEFAULT_TOKENS_PER_SECOND, OutputEstimator, max_tokens_of


def test_estimate_is_rate_times_seconds_capped_by_max_tokens() -> None:
    estimator = OutputEstimator()

    assert DEFAULT_TOKENS_PER_SECOND == 50.0
    assert estimator.estimate(2.0, None) == 100
    assert estimator.estimate(2.0, 64) == 64
    assert estimator.estimate(0.01, 64) == 0  # round(0.5) is 0
    assert estimator.estimate(-1.0, None) == 0


def test_exact_counts_move_the_rate_by_a_tenth_of_the_difference() -> None:
    estimator = OutputEstimator()
    estimator.observe(30, 1.0)

    assert estimator.rate == pytest.approx(48.0)  # 50 + 0.1 * (30 - 50)
    estimator.observe(0, 1.0)  # nothing counted says nothing
    estimator.observe(10, 0.0001)  # too short to measure
    assert estimator.rate == pytest.approx(48.0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 16}, 16),
        ({"max_completion_tokens": 8, "max_tokens": 16}, 8),
        ({"max_tokens": True}, None),
        ({"max_tokens": -1}, None),
        ({}, None),
    ],
)
def test_max_tokens_of(body: dict[str, object], expected: int | None) -> None:
    assert max_tokens_of(body) == expected
