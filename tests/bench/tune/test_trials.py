from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.bench.tune.space import Space, build_space
from kvroute.bench.tune.trials import make_trial, sample_point, write_trial
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.plugins.registry import REGISTRY


@pytest.fixture(scope="module")
def space() -> Space:
    return build_space(recommended_config_text())


def test_trial_zero_is_the_base(space: Space) -> None:
    assert sample_point(space, 7, 0) == space.base_point()


def test_a_trial_depends_on_the_seed_and_its_index_only(space: Space) -> None:
    assert sample_point(space, 1, 5) == sample_point(space, 1, 5)
    assert sample_point(space, 1, 5) != sample_point(space, 2, 5)
    assert sample_point(space, 1, 5) != sample_point(space, 1, 3)


def test_odd_trials_draw_every_dimension_in_its_range(space: Space) -> None:
    for index in range(1, 40, 2):
        point = sample_point(space, 0, index)
        for dim in space.dimensions:
            value = point[dim.name]
            assert value == 0 or dim.range.low <= value <= dim.range.high


def test_odd_trials_explore_even_trials_nudge(space: Space) -> None:
    base = space.base_point()
    for index in range(2, 40, 2):
        point = sample_point(space, 0, index)
        changed = [name for name in point if point[name] != base[name]]
        assert 1 <= len(changed) < len(base)
        for dim in space.dimensions:
            if dim.name not in changed or not point[dim.name] or not dim.base:
                continue
            if dim.range.log:
                assert 0.49 <= point[dim.name] / dim.base <= 2.01  # within a factor of 2
            else:  # within a quarter of the range's width
                assert abs(point[dim.name] - dim.base) <= 0.2501 * (dim.range.high - dim.range.low)


def test_every_trial_loads_in_the_router(space: Space) -> None:
    for index in range(12):
        load_config(make_trial(space, 3, index).text, REGISTRY)


def test_trial_files(space: Space, tmp_path: Path) -> None:
    trial = make_trial(space, 0, 4)

    path = write_trial(trial, tmp_path / "trials")

    assert path == tmp_path / "trials" / "trial-004.yaml"
    assert path.read_text() == trial.text
    assert len(trial.digest) == 16
