from __future__ import annotations

import math

import pytest

from kvroute.bench.overload.metrics import Outcome, jain, max_min_shares, summarise


def test_jain_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() -> None:
    assert jain([3, 3, 3]) == pytest.approx(1.0)
    assert jain([9, 0, 0]) == pytest.approx(1 / 3)
    assert math.isnan(jain([0, 0]))


def test_max_min_shares_fill_the_small_demands_first() -> None:
    assert max_min_shares([1, 1, 10], 6) == pytest.approx([1, 1, 4])
    assert max_min_shares([5, 5, 5], 6) == pytest.approx([2, 2, 2])
    assert max_min_shares([1, 2], 10) == pytest.approx([1, 2])


def outcome(tenant: str, objective: str, *, status: int | None = None, done: bool = True) -> Outcome:
    return Outcome(tenant, objective, done and status is None, status, 0.1 if done else None, 0.0, 1.0)


def test_summary_counts_refusals_losses_and_fair_shares() -> None:
    outcomes = [
        outcome("chat", "critical"),
        *[outcome("a", "standard") for _ in range(2)],
        *[outcome("greedy", "standard") for _ in range(2)],
        *[outcome("greedy", "standard", status=503) for _ in range(8)],
        outcome("greedy", "standard", status=429),
        outcome("a", "standard", done=False),  # no answer at all: lost
    ]
    summary = summarise(outcomes, window_s=2.0, slo_ttft_s=1.0)
    standard = summary["bands"]["standard"]
    assert standard["refused"] == {"429": 1, "503": 8}
    assert (standard["lost"], summary["lost"]) == (1, 1)
    assert summary["tenants"] == {"a": {"offered": 3, "completed": 2}, "greedy": {"offered": 11, "completed": 2}}
    assert summary["jain_fair_share"] == pytest.approx(1.0)  # 4 served, max-min fair is 2 and 2
    assert summary["goodput_rps"] == pytest.approx(2.5)
