from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvroute.bench.tune.search import rung_sizes, successive_halving


def test_rung_sizes_grow_by_three_to_all_cases() -> None:
    assert rung_sizes(9) == [1, 3, 9]
    assert rung_sizes(3) == [1, 3]
    assert rung_sizes(2) == [1, 2]
    assert rung_sizes(1) == [1]
    assert rung_sizes(10) == [1, 2, 4, 10]
    with pytest.raises(ValueError):
        rung_sizes(0)


class FakeScores:
    """Scores per trial that change with the number of cases; records what was asked."""

    def __init__(self, by_cases: dict[int, dict[int, float]]) -> None:
        self.by_cases = by_cases
        self.calls: list[tuple[list[int], int]] = []

    def __call__(self, indices: Sequence[int], count: int) -> dict[int, float]:
        self.calls.append((list(indices), count))
        return {i: self.by_cases[count][i] for i in indices}


def test_the_best_third_and_the_base_move_on() -> None:
    first = {0: 1.0, 1: 0.7, 2: 1.3, 3: 0.9, 4: 1.1, 5: 0.8, 6: 1.2}
    last = {0: 1.0, 1: 0.95, 3: 0.92, 5: 0.85}
    scores = FakeScores({1: first, 3: last})

    outcome = successive_halving(range(7), 3, scores)

    # ceil(7 / 3) = 3 best on one case: 1 (0.7), 5 (0.8), 3 (0.9); the base always
    assert outcome.rungs[0].promoted == [0, 1, 3, 5]
    assert scores.calls == [([0, 1, 2, 3, 4, 5, 6], 1), ([0, 1, 3, 5], 3)]
    # the best on one case (1) is not the best on all three (5)
    assert outcome.winner == 5
    assert outcome.final == last


def test_the_base_wins_ties() -> None:
    scores = FakeScores({1: {0: 1.0, 1: 1.0, 2: 1.0}, 2: {0: 1.0, 1: 1.0}})

    assert successive_halving(range(3), 2, scores).winner == 0


def test_no_candidate_better_than_the_base_keeps_the_base() -> None:
    scores = FakeScores({1: {0: 1.0, 1: 1.2, 2: 0.9}, 2: {0: 1.0, 2: 1.05}})

    outcome = successive_halving(range(3), 2, scores)

    assert outcome.winner == 0
    assert outcome.rungs[0].promoted == [0, 2]


def test_one_case_is_one_rung() -> None:
    scores = FakeScores({1: {0: 1.0, 1: 0.5, 2: 0.6}})

    outcome = successive_halving(range(3), 1, scores)

    assert [r.cases for r in outcome.rungs] == [1]
    assert outcome.winner == 1
