from __future__ import annotations

import math

import pytest

from kvroute.bench.tune.objective import WORST, compare, objective


def _run(p90: float | None, tput: float = 100.0, unfinished: int = 0) -> dict[str, float | int | None]:
    return {"ttft_p90_s": p90, "output_tokens_per_s": tput, "unfinished": unfinished}


def test_geometric_mean_of_ttft_ratios() -> None:
    base = [_run(0.2), _run(1.0)]
    candidate = [_run(0.1), _run(2.0)]  # halves one, doubles the other

    assert objective(candidate, base) == pytest.approx(1.0)
    assert objective([_run(0.1), _run(0.5)], base) == pytest.approx(0.5)


def test_throughput_within_tolerance_costs_nothing() -> None:
    assert objective([_run(0.1, tput=98.0)], [_run(0.2)]) == pytest.approx(0.5)


def test_throughput_lost_beyond_tolerance_is_penalised() -> None:
    result = compare([_run(0.1, tput=90.0)], [_run(0.2)])

    # 0.5 * (1 + 10 * (0.97 - 0.90))
    assert result["objective"] == pytest.approx(0.5 * 1.7)
    assert result["throughput_ratio"] == pytest.approx(0.9)


def test_unfinished_requests_count_as_the_worst() -> None:
    assert compare([_run(0.1, unfinished=3)], [_run(0.2)])["ttft_ratio"] == pytest.approx(WORST)
    assert compare([_run(None)], [_run(0.2)])["ttft_ratio"] == pytest.approx(WORST)


def test_base_against_itself_is_one() -> None:
    base = [_run(0.3), _run(0.7, tput=55.0)]

    assert compare(base, base) == {"objective": 1.0, "ttft_ratio": 1.0, "throughput_ratio": 1.0}
    assert not math.isnan(objective(base, base))
