"""InferenceObjectives against kmock's API emulator: the status of the pool's SchedulingProfile lists the pool's
objectives with their priorities, follows them as they change, move to another pool or go, and the operator never
writes an objective."""

from __future__ import annotations

from typing import Any

from tests.support import eventually

from ..conftest import (
    OBJECTIVES,
    POOLS,
    PROFILES,
    RunningOperator,
    objective_object,
    pool_object,
    profile_object,
    profile_spec,
    settled,
)


def objectives(op: RunningOperator, profile: str) -> list[dict[str, Any]] | None:
    status = (op.obj(PROFILES, profile) or {}).get("status") or {}
    listed: list[dict[str, Any]] | None = status.get("objectives")
    return listed


async def test_the_profile_status_follows_the_pools_objectives(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(POOLS, pool_object("mistral"))
    await op.create(PROFILES, profile_object("fast"))
    await op.create(PROFILES, profile_object("other", profile_spec("mistral")))
    await eventually(lambda: objectives(op, "fast") == [] and objectives(op, "other") == [])
    assert op.obj(PROFILES, "fast")["status"]["objectiveCount"] == 0  # type: ignore[index]

    await op.create(OBJECTIVES, objective_object("chat", priority=10))
    await op.create(OBJECTIVES, objective_object("batch"))  # unset: 0
    await op.create(OBJECTIVES, objective_object("elsewhere", pool="mistral", priority=-3))
    await eventually(
        lambda: objectives(op, "fast") == [{"name": "batch", "priority": 0}, {"name": "chat", "priority": 10}]
    )
    await eventually(lambda: objectives(op, "other") == [{"name": "elsewhere", "priority": -3}])

    # A new priority, an objective moved to the other pool, a deleted one.
    await op.patch(OBJECTIVES, "chat", {"metadata": {"generation": 2}, "spec": {"priority": 20}})
    await eventually(lambda: {"name": "chat", "priority": 20} in (objectives(op, "fast") or []))
    await op.patch(OBJECTIVES, "batch", {"metadata": {"generation": 2}, "spec": {"poolRef": {"name": "mistral"}}})
    await eventually(lambda: objectives(op, "fast") == [{"name": "chat", "priority": 20}])
    await eventually(
        lambda: objectives(op, "other") == [{"name": "batch", "priority": 0}, {"name": "elsewhere", "priority": -3}]
    )
    await op.delete(OBJECTIVES, "chat")
    await eventually(lambda: objectives(op, "fast") == [])

    writes = await settled(op)
    objective_writes = [w for w in writes if "/inferenceobjectives" in w]
    assert len(objective_writes) == 6  # the test's own: 3 creates, 2 patches, 1 delete


async def test_a_status_only_change_of_an_objective_costs_nothing(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(PROFILES, profile_object("fast"))
    await op.create(OBJECTIVES, objective_object("chat", priority=1))
    await eventually(lambda: objectives(op, "fast") == [{"name": "chat", "priority": 1}])
    before = await settled(op)
    reconciles = op.reconciles()

    conditions = [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]
    await op.patch(OBJECTIVES, "chat", {"status": {"conditions": conditions}}, subresource="status")
    writes = await settled(op)

    assert op.reconciles() == reconciles
    assert len(writes) == len(before) + 1  # the test's own status write


async def test_only_the_profile_that_configures_the_pool_reports_objectives(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(OBJECTIVES, objective_object("chat", priority=5))
    await op.create(PROFILES, profile_object("fast", created="2026-01-01T00:00:00Z"))
    await op.create(PROFILES, profile_object("late", created="2026-02-01T00:00:00Z"))

    await eventually(lambda: objectives(op, "fast") == [{"name": "chat", "priority": 5}])
    await eventually(lambda: op.condition("late", "Accepted").get("reason") == "Conflict")
    assert "objectives" not in (op.obj(PROFILES, "late") or {}).get("status", {})
