"""SchedulingProfiles against kmock's API emulator: validation with paths, oldest-wins conflicts, missing pools."""

from __future__ import annotations

import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from tests.support import eventually

from ..conftest import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    POOLS,
    PROFILES,
    RunningOperator,
    pool_object,
    profile_object,
    profile_spec,
    settled,
)


def _config(op: RunningOperator) -> dict[str, object]:
    cm = op.obj(CONFIG_MAPS, "llama-kvroute-config")
    assert cm is not None
    document: dict[str, object] = yaml.safe_load(cm["data"]["config.yaml"])
    return document


async def _accepted(op: RunningOperator, profile: str, status: str = "True") -> dict[str, str]:
    def check() -> dict[str, str] | None:
        condition = op.condition(profile, "Accepted")
        return condition if condition.get("status") == status else None

    result: dict[str, str] = await eventually(check)
    return result


async def test_an_invalid_profile_is_rejected_with_paths_and_changes_nothing(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(PROFILES, profile_object("fast"))
    await _accepted(op, "fast")
    before = await settled(op)
    good = op.obj(CONFIG_MAPS, "llama-kvroute-config")
    deployment = op.obj(DEPLOYMENTS, "llama-kvroute")

    spec = profile_spec(router={"mode": "proxy"})
    spec["plugins"][0]["parameters"] = {"blockSizeTokens": "lots"}
    await op.patch(PROFILES, "fast", {"metadata": {"generation": 2}, "spec": spec})
    condition = await _accepted(op, "fast", "False")
    assert condition["reason"] == "InvalidConfig"
    assert condition["message"].startswith("spec.plugins[0].parameters.blockSizeTokens: ")
    assert condition["observedGeneration"] == 2
    assert op.condition("fast", "Ready")["reason"] == "NotAccepted"

    writes = await settled(op)
    assert writes[len(before) :] == [
        "PATCH /apis/kvroute.io/v1alpha1/namespaces/ml/schedulingprofiles/fast",  # the test's edit
        "PATCH /apis/kvroute.io/v1alpha1/namespaces/ml/schedulingprofiles/fast/status",  # the operator's report
    ]
    assert op.obj(CONFIG_MAPS, "llama-kvroute-config") == good
    assert op.obj(DEPLOYMENTS, "llama-kvroute") == deployment

    # Fixing it rolls the fix out.
    spec["plugins"][0]["parameters"] = {"blockSizeTokens": 32}
    await op.patch(PROFILES, "fast", {"metadata": {"generation": 3}, "spec": spec})
    await _accepted(op, "fast")
    plugins = _config(op)["plugins"]
    assert isinstance(plugins, list)
    assert plugins[0]["parameters"] == {"blockSizeTokens": 32}
    args = (op.obj(DEPLOYMENTS, "llama-kvroute") or {})["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1:3] == ["--mode", "proxy"]


async def test_an_invalid_first_profile_leaves_the_pool_on_the_default(running_operator: RunningOperator) -> None:
    op = running_operator
    spec = profile_spec()
    spec["schedulingProfiles"][0]["plugins"][0]["pluginRef"] = "typo-scorer"
    await op.create(PROFILES, profile_object("fast", spec))
    await op.create(POOLS, pool_object("llama"))
    condition = await _accepted(op, "fast", "False")
    assert condition["reason"] == "InvalidConfig"
    assert condition["message"] == 'spec.schedulingProfiles[0].plugins[0].pluginRef: unknown plugin "typo-scorer"'
    await eventually(lambda: op.obj(CONFIG_MAPS, "llama-kvroute-config"))
    assert _config(op) == yaml.safe_load(DEFAULT_CONFIG_TEXT)


async def test_the_oldest_profile_wins_and_the_next_one_takes_over(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(
        PROFILES, profile_object("newer", profile_spec(metrics={"engine": "sglang"}), created="2026-02-01T00:00:00Z")
    )
    await op.create(PROFILES, profile_object("older", created="2026-01-01T00:00:00Z"))
    await _accepted(op, "older")
    conflict = await _accepted(op, "newer", "False")
    assert conflict["reason"] == "Conflict"
    assert conflict["message"] == 'InferencePool "llama" is configured by the older SchedulingProfile "older"'
    assert "metrics" not in _config(op)

    await op.delete(PROFILES, "older")
    await _accepted(op, "newer")
    await eventually(lambda: _config(op).get("metrics") == {"engine": "sglang"})


async def test_a_profile_waits_for_its_pool(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(PROFILES, profile_object("fast"))
    condition = await _accepted(op, "fast", "False")
    assert (condition["reason"], condition["message"]) == ("PoolNotFound", 'no InferencePool "llama" in this namespace')
    await op.create(POOLS, pool_object("llama"))
    await _accepted(op, "fast")


async def test_moving_a_profile_to_another_pool_returns_the_old_one_to_the_default(
    running_operator: RunningOperator,
) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(POOLS, pool_object("mistral", picker="mistral-epp"))
    await op.create(PROFILES, profile_object("fast"))
    await _accepted(op, "fast")
    await op.patch(PROFILES, "fast", {"metadata": {"generation": 2}, "spec": {"poolRef": {"name": "mistral"}}})

    def mistral_config() -> dict[str, object] | None:
        cm = op.obj(CONFIG_MAPS, "mistral-kvroute-config")
        return yaml.safe_load(cm["data"]["config.yaml"]) if cm is not None else None

    await eventually(lambda: (mistral_config() or {}).get("plugins") == profile_spec()["plugins"])
    await eventually(lambda: _config(op) == yaml.safe_load(DEFAULT_CONFIG_TEXT))
