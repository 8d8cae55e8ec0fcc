"""InferenceObjectives as priorities: which objectives belong to a pool, and the priority each gives."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.router.config.objectives import pool_of, pool_priorities, priority_of


def objective(name: str, pool: str = "llm", priority: Any = None, **ref: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool, **ref}}
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def test_each_objective_of_the_pool_maps_to_its_priority_unset_meaning_zero() -> None:
    found = pool_priorities(
        [objective("chat", priority=10), objective("batch", priority=-1), objective("default")], "llm"
    )

    assert found.priorities == {"chat": 10, "batch": -1, "default": 0}
    assert found.invalid == {}


def test_objectives_of_other_pools_and_other_kinds_are_left_out() -> None:
    objectives = [
        objective("mine", priority=1),
        objective("theirs", pool="other", priority=2),
        objective("explicit", priority=3, group="inference.networking.k8s.io", kind="InferencePool"),
        objective("legacy-group", priority=4, group="inference.networking.x-k8s.io"),
        objective("service", priority=5, group="", kind="Service"),
    ]

    assert pool_priorities(objectives, "llm").priorities == {"mine": 1, "explicit": 3}
    assert pool_priorities(objectives, "other").priorities == {"theirs": 2}


def test_an_objective_being_deleted_no_longer_counts() -> None:
    leaving = objective("leaving", priority=7)
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    assert pool_priorities([leaving, objective("staying", priority=1)], "llm").priorities == {"staying": 1}


@pytest.mark.parametrize("value", ["high", 1.5, True])
def test_a_priority_that_is_not_an_integer_is_reported_not_guessed(value: Any) -> None:
    found = pool_priorities([objective("odd", priority=value), objective("fine", priority=2)], "llm")

    assert found.priorities == {"fine": 2}
    assert found.invalid == {"odd": f"spec.priority must be an integer, got {value!r}"}
    with pytest.raises(ValueError, match=r"spec\.priority"):
        priority_of(objective("odd", priority=value))


def test_pool_of_reads_the_pool_ref() -> None:
    assert pool_of(objective("a")) == "llm"
    assert pool_of({"metadata": {"name": "a"}, "spec": {}}) is None
    assert pool_of({"metadata": {"name": "a"}}) is None
    assert pool_of(objective("a", pool="")) is None
