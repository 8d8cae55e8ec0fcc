from __future__ import annotations

from typing import Any

from kvroute.operator import status

from .conftest import profile_object


def _deployment(
    *, config_hash: str = "h1", replicas: int = 2, ready: int = 2, available: bool = True, observed: int = 3
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 3, "annotations": {"kvroute.io/config-hash": config_hash}},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if available else "False"}],
        },
    }


def test_oldest_profile_wins_and_name_breaks_ties() -> None:
    old = profile_object("zeta", created="2026-01-01T00:00:00Z")
    new = profile_object("alpha", created="2026-01-02T00:00:00Z")
    twin = profile_object("beta", created="2026-01-01T00:00:00Z")
    winner, losers = status.elect([new, twin, old])
    assert winner is twin
    assert losers == [old, new]
    assert status.elect([]) == (None, [])


def test_conflict_names_the_winner() -> None:
    condition = status.conflict("llama", "fast")
    assert (condition.type, condition.status, condition.reason) == ("Accepted", False, "Conflict")
    assert condition.message == 'InferencePool "llama" is configured by the older SchedulingProfile "fast"'


def test_invalid_config_lists_every_error_path() -> None:
    condition = status.invalid(['spec.plugins[0].type: unknown plugin type "x"', "spec.router.replicas: too big"])
    assert (condition.status, condition.reason) == (False, "InvalidConfig")
    assert condition.message == 'spec.plugins[0].type: unknown plugin type "x"; spec.router.replicas: too big'


def test_pool_not_found() -> None:
    condition = status.pool_not_found("llama")
    assert (condition.status, condition.reason) == (False, "PoolNotFound")
    assert condition.message == 'no InferencePool "llama" in this namespace'


def test_ready_needs_this_config_an_observed_rollout_and_an_available_replica() -> None:
    assert status.ready(None, "h1")[0].reason == "RouterMissing"
    condition, ready = status.ready(_deployment(), "h1")
    assert (condition.status, condition.reason, condition.message, ready) == (
        True,
        "RouterAvailable",
        "2/2 router replicas ready",
        2,
    )
    assert status.ready(_deployment(config_hash="h0"), "h1")[0].reason == "ConfigPending"
    assert status.ready(_deployment(observed=2), "h1")[0].reason == "RolloutInProgress"
    assert status.ready(_deployment(ready=0, available=False), "h1")[0].reason == "RouterUnavailable"
    assert status.ready(_deployment(replicas=0, ready=0), "h1")[0].status is False


def test_profile_status_is_complete_and_keeps_transition_times() -> None:
    profile = profile_object("fast", generation=4)
    first = status.profile_status(
        profile, status.accepted(), status.not_ready_unaccepted(), config_hash="h1", at="2026-01-01T00:00:00Z"
    )
    assert first == {
        "observedGeneration": 4,
        "configHash": "h1",
        "routerDeployment": None,
        "readyReplicas": None,
        "objectives": None,
        "objectiveCount": None,
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "the profile configures its pool's router",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 4,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "NotAccepted",
                "message": "the profile is not accepted (see the Accepted condition)",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 4,
            },
        ],
    }
    profile["status"] = first
    ready, _ = status.ready(_deployment(), "h1")
    second = status.profile_status(profile, status.accepted(), ready, config_hash="h1", at="2026-01-02T00:00:00Z")
    accepted_condition, ready_condition = second["conditions"]
    assert accepted_condition["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # unchanged status
    assert ready_condition["lastTransitionTime"] == "2026-01-02T00:00:00Z"  # False -> True
    assert status.status_differs(profile, second)
    same = status.profile_status(
        profile, status.accepted(), status.not_ready_unaccepted(), config_hash="h1", at="2026-01-03T00:00:00Z"
    )
    assert not status.status_differs(profile, same)  # nothing new: nothing to write


def test_objectives_are_listed_by_name_with_their_priority_and_counted() -> None:
    profile = profile_object()
    result = status.profile_status(
        profile, status.accepted(), status.not_ready_unaccepted(), objectives={"chat": 10, "batch": -1, "bulk": 0}
    )
    assert result["objectives"] == [
        {"name": "batch", "priority": -1},
        {"name": "bulk", "priority": 0},
        {"name": "chat", "priority": 10},
    ]
    assert result["objectiveCount"] == 3
    profile["status"] = result
    assert status.status_differs(
        profile,
        status.profile_status(
            profile, status.accepted(), status.not_ready_unaccepted(), objectives={"chat": 10, "bulk": 0}
        ),
    )
    none = status.profile_status(profile, status.accepted(), status.not_ready_unaccepted(), objectives={})
    assert (none["objectives"], none["objectiveCount"]) == ([], 0)


def test_objectives_beyond_the_bound_are_counted_not_listed() -> None:
    many = {f"objective-{i:03d}": i for i in range(status.MAX_OBJECTIVES + 6)}
    result = status.profile_status(profile_object(), status.accepted(), status.not_ready_unaccepted(), objectives=many)
    assert len(result["objectives"]) == status.MAX_OBJECTIVES == 64
    assert result["objectives"][-1] == {"name": "objective-063", "priority": 63}
    assert result["objectiveCount"] == 70


def test_long_messages_are_truncated() -> None:
    profile = profile_object()
    result = status.profile_status(profile, status.invalid(["x" * 10000]), status.not_ready_unaccepted())
    assert len(result["conditions"][0]["message"]) == 4096
