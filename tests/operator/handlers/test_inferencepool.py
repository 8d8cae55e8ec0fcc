"""The operator against kmock's API emulator: InferencePools become routers, drift is repaired, and a reconcile
with nothing to do writes nothing."""

from __future__ import annotations

import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from tests.support import eventually

from ..conftest import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    POOLS,
    PROFILES,
    ROLE_BINDINGS,
    ROLES,
    ROUTER_IMAGE,
    SERVICE_ACCOUNTS,
    SERVICES,
    RunningOperator,
    pool_object,
    profile_object,
    settled,
)


async def test_a_pool_without_profile_runs_the_default_configuration(running_operator: RunningOperator) -> None:
    op = running_operator
    pool = pool_object("llama")
    await op.create(POOLS, pool)
    await eventually(lambda: op.obj(SERVICES, "llama-epp"))
    cm = op.obj(CONFIG_MAPS, "llama-kvroute-config")
    assert cm is not None
    assert yaml.safe_load(cm["data"]["config.yaml"]) == yaml.safe_load(DEFAULT_CONFIG_TEXT)
    for resource, name in (
        (CONFIG_MAPS, "llama-kvroute-config"),
        (SERVICE_ACCOUNTS, "llama-kvroute"),
        (ROLES, "llama-kvroute"),
        (ROLE_BINDINGS, "llama-kvroute"),
        (DEPLOYMENTS, "llama-kvroute"),
        (SERVICES, "llama-epp"),
    ):
        child = op.obj(resource, name)
        assert child is not None, name
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "InferencePool",
            "llama",
            pool["metadata"]["uid"],
            True,
        )
    deployment = op.obj(DEPLOYMENTS, "llama-kvroute")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == ROUTER_IMAGE
    assert (
        deployment["metadata"]["annotations"]["kvroute.io/config-hash"]
        == cm["metadata"]["annotations"]["kvroute.io/config-hash"]
    )
    writes = await settled(op)
    assert not [w for w in writes if "/inferencepools" in w and not w.startswith("POST")]  # the pool is never written


async def test_a_profile_configures_its_pool_and_reports_ready(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(PROFILES, profile_object("fast"))
    accepted = await eventually(
        lambda: op.condition("fast", "Accepted").get("status") == "True" and op.condition("fast", "Accepted")
    )
    assert accepted["reason"] == "Accepted"
    status = (op.obj(PROFILES, "fast") or {})["status"]
    cm = op.obj(CONFIG_MAPS, "llama-kvroute-config")
    assert cm is not None
    document = yaml.safe_load(cm["data"]["config.yaml"])
    assert [p["type"] for p in document["plugins"]] == ["prefix-cache-scorer", "queue-scorer", "max-score-picker"]
    assert status["configHash"] == cm["metadata"]["annotations"]["kvroute.io/config-hash"]
    assert status["routerDeployment"] == "llama-kvroute"
    assert status["observedGeneration"] == 1
    assert op.condition("fast", "Ready")["status"] == "False"

    # The Deployment controller reports the rollout: the profile becomes Ready.
    await op.patch(
        DEPLOYMENTS,
        "llama-kvroute",
        {
            "metadata": {"generation": 1},
            "status": {
                "observedGeneration": 1,
                "replicas": 1,
                "readyReplicas": 1,
                "conditions": [{"type": "Available", "status": "True"}],
            },
        },
        subresource="status",
    )
    ready = await eventually(
        lambda: op.condition("fast", "Ready").get("status") == "True" and op.condition("fast", "Ready")
    )
    assert (ready["reason"], ready["message"]) == ("RouterAvailable", "1/1 router replicas ready")
    assert (op.obj(PROFILES, "fast") or {})["status"]["readyReplicas"] == 1


async def test_nothing_to_do_writes_nothing(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(PROFILES, profile_object("fast"))
    await eventually(lambda: op.condition("fast", "Accepted"))
    before = await settled(op)
    reconciles = op.reconciles()

    # A gateway writes the pool's status; someone labels the router Deployment: both are events, neither a change.
    await op.patch(POOLS, "llama", {"status": {"parents": [{"parentRef": {"name": "gw"}}]}}, subresource="status")
    await op.patch(DEPLOYMENTS, "llama-kvroute", {"metadata": {"labels": {"team": "ml"}}})
    after = await settled(op)
    assert op.reconciles() > reconciles  # the Deployment's event was reconciled ...
    assert after[len(before) :] == [  # ... and wrote nothing but the test's own two patches
        "PATCH /apis/inference.networking.k8s.io/v1/namespaces/ml/inferencepools/llama/status",
        "PATCH /apis/apps/v1/namespaces/ml/deployments/llama-kvroute",
    ]


async def test_drift_is_repaired(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await eventually(lambda: op.obj(DEPLOYMENTS, "llama-kvroute"))
    await settled(op)
    deployment = op.obj(DEPLOYMENTS, "llama-kvroute")
    assert deployment is not None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    tampered = [{**containers[0], "image": "evil:latest"}]
    await op.patch(DEPLOYMENTS, "llama-kvroute", {"spec": {"template": {"spec": {"containers": tampered}}}})

    def image() -> str:
        return str((op.obj(DEPLOYMENTS, "llama-kvroute") or {})["spec"]["template"]["spec"]["containers"][0]["image"])

    await eventually(lambda: image() == ROUTER_IMAGE)


async def test_a_service_the_pool_does_not_control_is_left_alone(running_operator: RunningOperator) -> None:
    op = running_operator
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llama-epp", "namespace": "ml"},
        "spec": {"ports": [{"port": 9002}], "selector": {"app": "someone-elses-picker"}},
    }
    await op.create(SERVICES, foreign)
    await op.create(POOLS, pool_object("llama"))
    await eventually(lambda: op.obj(DEPLOYMENTS, "llama-kvroute"))
    writes = await settled(op)
    assert not [w for w in writes if w.startswith("PATCH") and w.endswith("/services/llama-epp")]
    assert (op.obj(SERVICES, "llama-epp") or {})["spec"]["selector"] == {"app": "someone-elses-picker"}


async def test_deleting_the_pool_leaves_its_profile_without_pool(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama"))
    await op.create(PROFILES, profile_object("fast"))
    await eventually(lambda: op.condition("fast", "Accepted").get("status") == "True")
    await op.delete(POOLS, "llama")
    condition = await eventually(
        lambda: op.condition("fast", "Accepted").get("reason") == "PoolNotFound" and op.condition("fast", "Accepted")
    )
    assert condition == {**condition, "status": "False", "message": 'no InferencePool "llama" in this namespace'}


async def test_renaming_the_picker_service_moves_the_service(running_operator: RunningOperator) -> None:
    op = running_operator
    await op.create(POOLS, pool_object("llama", picker="llama-epp"))
    await eventually(lambda: op.obj(SERVICES, "llama-epp"))
    await op.patch(
        POOLS,
        "llama",
        {
            "metadata": {"generation": 2},
            "spec": {"endpointPickerRef": {"name": "llama-router", "port": {"number": 9002}}},
        },
    )
    await eventually(lambda: op.obj(SERVICES, "llama-router") and op.obj(SERVICES, "llama-epp") is None)
