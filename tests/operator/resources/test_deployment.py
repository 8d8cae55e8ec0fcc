from __future__ import annotations

from typing import Any

import pytest

from kvroute.operator.models import RouterSpec
from kvroute.operator.resources.deployment import deployment
from kvroute.operator.resources.meta import Pool
from kvroute.operator.resources.service import service

from ..conftest import NAMESPACE, pool_object

IMAGE = "registry.example/kvroute-router:1.2.3"


def _deployment(**router: Any) -> dict[str, Any]:
    pool = Pool.from_object(pool_object("llama"))
    return deployment(pool, RouterSpec.model_validate(router), "abc123", image=IMAGE)


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    [container] = dep["spec"]["template"]["spec"]["containers"]
    return container


def test_router_runs_kubernetes_discovery_of_the_pool_with_its_config_map() -> None:
    container = _container(_deployment())
    assert container["image"] == IMAGE
    assert container["command"] == ["kvroute"]
    assert container["args"] == [
        "router",
        "--mode",
        "ext-proc",
        "--discovery",
        "kubernetes",
        "--pool-name",
        "llama",
        "--pool-namespace",
        NAMESPACE,
        "--config-configmap",
        "llama-kvroute-config",
        "--host",
        "0.0.0.0",
        "--log-level",
        "info",
        "--workers",
        "1",
    ]


def test_ext_proc_ports_and_grpc_health_probes() -> None:
    container = _container(_deployment())
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("grpc-ext-proc", 9002),
        ("grpc-health", 9003),
        ("http-metrics", 9090),
    ]
    assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    assert container["startupProbe"]["grpc"] == {"port": 9003, "service": "liveness"}


def test_proxy_mode_serves_http_on_8080() -> None:
    container = _container(_deployment(mode="proxy", logLevel="debug"))
    assert container["args"][1:3] == ["--mode", "proxy"]
    assert container["args"][-4:] == ["--log-level", "debug", "--workers", "1"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 8080)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_containers_are_locked_down() -> None:
    dep = _deployment()
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert _container(dep)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == "llama-kvroute"
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(dep)["volumeMounts"]


def test_config_hash_is_on_the_deployment_not_the_pod_template() -> None:
    dep = _deployment()
    assert dep["metadata"]["annotations"] == {"kvroute.io/config-hash": "abc123"}
    assert "annotations" not in dep["spec"]["template"]["metadata"]  # a new config is a reload, not a rollout


def test_replicas_are_set_only_when_the_profile_sets_them() -> None:
    assert "replicas" not in _deployment()["spec"]
    assert _deployment(replicas=3)["spec"]["replicas"] == 3


def test_resources_default_and_override() -> None:
    assert _container(_deployment())["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    custom = _container(_deployment(resources={"requests": {"cpu": "2"}}))["resources"]
    assert custom == {"requests": {"cpu": "2"}}


def test_resources_are_rendered_as_the_api_server_stores_them() -> None:
    """What the profile says in any spelling, the manifest says as the live Deployment will (else every reconcile
    would find a difference and apply again); an empty list is left out, as the server leaves it out."""
    resources = {"requests": {"cpu": "1000m", "memory": "0.5Gi"}, "limits": {"cpu": 2, "memory": "1024Mi"}}
    assert _container(_deployment(resources=resources))["resources"] == {
        "requests": {"cpu": "1", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert _container(_deployment(resources={"requests": {}, "limits": {"cpu": "1"}}))["resources"] == {
        "limits": {"cpu": "1"}
    }


def test_rollout_surges_before_removing_a_router() -> None:
    dep = _deployment()
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "kvroute-router", "app.kubernetes.io/instance": "llama"}
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferencePool"


SELECTOR = "app.kubernetes.io/instance=llama,app.kubernetes.io/name=kvroute-router"


def test_several_replicas_share_routing_state_with_the_pods_of_their_own_deployment() -> None:
    dep = _deployment(replicas=3)
    container = _container(dep)
    assert container["args"][-4:] == ["--fleet-peer-selector", SELECTOR, "--fleet-port", "9005"]
    # The selector is exactly the Deployment's own: a router's peers are the other pods of its Deployment.
    labels = dict(pair.split("=") for pair in SELECTOR.split(","))
    assert labels == dep["spec"]["selector"]["matchLabels"]
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    ]
    assert ("fleet-sync", 9005) in [(p["name"], p["containerPort"]) for p in container["ports"]]


@pytest.mark.parametrize(
    ("router", "syncs"),
    [
        ({}, False),
        ({"replicas": 1}, False),
        ({"replicas": 2}, True),
        ({"replicas": 2, "fleetSync": False}, False),
        ({"fleetSync": True}, True),  # replicas owned by an autoscaler
        ({"replicas": 1, "fleetSync": True, "mode": "proxy"}, True),
    ],
)
def test_fleet_sync_follows_the_replicas_unless_the_profile_says(router: dict[str, Any], syncs: bool) -> None:
    container = _container(_deployment(**router))
    assert ("--fleet-peer-selector" in container["args"]) is syncs
    assert ("env" in container) is syncs
    assert any(p["name"] == "fleet-sync" for p in container["ports"]) is syncs


def test_the_fleet_sync_port_is_not_on_the_service() -> None:
    pool = Pool.from_object(pool_object("llama"))
    ports = service(pool, "ext-proc")
    assert ports is not None
    assert 9005 not in [p["port"] for p in ports["spec"]["ports"]]


@pytest.mark.parametrize(
    ("resources", "workers"),
    [
        ({"limits": {"cpu": "2"}}, 2),
        ({"requests": {"cpu": "500m"}, "limits": {"cpu": "2500m"}}, 2),
        ({"requests": {"cpu": "4"}}, 4),
        ({"requests": {"cpu": "250m"}}, 1),
        ({"limits": {"memory": "1Gi"}}, 1),
    ],
)
def test_a_pod_runs_one_router_worker_per_whole_core(resources: dict[str, Any], workers: int) -> None:
    container = _container(_deployment(resources=resources))

    at = container["args"].index("--workers")
    assert container["args"][at + 1] == str(workers)
