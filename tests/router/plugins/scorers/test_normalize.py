import pytest

from kvroute.router.plugins.scorers.normalize import normalize_min_max


def test_lower_is_better_maps_min_to_one_and_max_to_zero() -> None:
    assert normalize_min_max({"a": 0, "b": 5, "c": 10}, lower_is_better=True) == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_higher_is_better_maps_max_to_one_and_min_to_zero() -> None:
    assert normalize_min_max({"a": 2, "b": 3, "c": 6}, lower_is_better=False) == {"a": 0.0, "b": 0.25, "c": 1.0}


@pytest.mark.parametrize("lower_is_better", [True, False])
def test_all_equal_values_score_one(lower_is_better: bool) -> None:
    assert normalize_min_max({"a": 7, "b": 7}, lower_is_better=lower_is_better) == {"a": 1.0, "b": 1.0}
    assert normalize_min_max({"only": 3.5}, lower_is_better=lower_is_better) == {"only": 1.0}


def test_no_values_give_no_scores() -> None:
    assert normalize_min_max({}, lower_is_better=True) == {}
