from __future__ import annotations

import random

from kvroute.bench.tune.ranges import Range, weight_range


def test_log_integer_draws_stay_in_range_and_are_integers() -> None:
    rng = random.Random(1)
    values = [Range(2048, 262144, log=True, integer=True).draw(rng) for _ in range(500)]

    assert all(isinstance(v, int) and 2048 <= v <= 262144 for v in values)
    # log-uniform: about half of the draws below the geometric midpoint (23,170)
    assert 200 < sum(v < 23170 for v in values) < 300


def test_a_weight_is_dropped_in_about_one_draw_in_six() -> None:
    rng = random.Random(2)
    values = [weight_range(2.0).draw(rng) for _ in range(600)]

    assert 70 < sum(v == 0 for v in values) < 130
    assert all(v == 0 or 0.5 <= v <= 8.0 for v in values)


def test_floats_keep_three_significant_digits() -> None:
    value = Range(0.25, 4.0, log=True).draw(random.Random(3))

    assert value == float(f"{value:.3g}")


def test_nudge_stays_within_a_factor_of_two_and_the_range() -> None:
    rng = random.Random(4)
    r = Range(1.0, 10.0, log=True)

    nudged = [r.nudge(rng, 8.0) for _ in range(200)]

    assert all(4.0 <= v <= 10.0 for v in nudged)
    assert r.nudge(rng, 0) == 1.0  # a dropped weight comes back at the bottom of its range


def test_nudge_moves_to_a_neighbouring_choice() -> None:
    r = Range(choices=(0, 256, 1024, 4096))

    assert {r.nudge(random.Random(i), 256) for i in range(20)} == {0, 1024}


def test_including_widens_to_the_base_value() -> None:
    assert Range(2048, 262144, log=True).including(1024) == Range(1024, 262144, log=True)
    assert Range(choices=(1, 2)).including(5).choices == (1, 2, 5)
    assert Range(1, 4, log=True).including(0) == Range(1, 4, log=True)  # 0 is not on a log scale


def test_check_names_the_problem() -> None:
    assert Range(5, 1).check() == "low (5) is above high (1)"
    assert Range(0, 1, log=True).check() == "a log range needs low > 0 (got 0)"
    assert Range(0, 1).check() is None
