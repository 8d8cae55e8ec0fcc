"""The router in Kubernetes mode against the real API server: endpoints from an InferencePool's Ready pods, a
deleted pod out of the candidate set within a second, ConfigMap edits hot-reloaded.

The router runs as `kvroute router --discovery kubernetes` (the flags the operator's Deployment passes), as a
ServiceAccount whose Role grants only what the router needs, the pool and the ConfigMap by `resourceNames`.
The model servers are `kvroute sim serve` processes on 127.0.0.x; their pods are never scheduled (an unknown
`schedulerName` keeps kwok away from them) and the test writes their status: Ready, with `podIP` set to the
simulator's address. Every address the router is given is in 127.0.0.0/8, and the test checks that every
endpoint it routed to is.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from tests.support import Processes, eventually_sync, free_port, kvroute_command

from .controlplane.cluster import ControlPlane
from .helpers import (
    create_pod_serving_at,
    exec_runs,
    http,
    loopback_hosts_sharing_a_free_port,
    ok,
    write_exec_kubeconfig,
)

pytestmark = pytest.mark.e2e

CRD_FILE = Path(__file__).resolve().parents[1] / "crds" / "inferencepool.yaml"
CRD_NAME = "inferencepools.inference.networking.k8s.io"
POOL, CONFIG_MAP, MODEL = "llm", "llm-router", "fake-model"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_namespaces = (f"router-e2e-{i}" for i in itertools.count())
# Used only if crds/inferencepool.yaml is missing: the fields the router reads.
MINIMAL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": CRD_NAME,
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
        },
    },
    "spec": {
        "group": "inference.networking.k8s.io",
        "names": {"kind": "InferencePool", "plural": "inferencepools", "singular": "inferencepool"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def inferencepool_crd(control_plane: ControlPlane) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text()) if CRD_FILE.is_file() else MINIMAL_CRD
    ok(control_plane.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd), 201, 409)

    def established() -> bool:
        body = ok(control_plane.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"))
        conditions = (body.get("status") or {}).get("conditions") or []  # null until the API server fills it in
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    eventually_sync(established, timeout=30, interval=0.05, message="the InferencePool CRD to be established")


@pytest.fixture
def namespace(control_plane: ControlPlane, inferencepool_crd: None) -> Iterator[str]:
    name = next(_namespaces)
    ok(
        control_plane.api(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
    )
    yield name
    control_plane.api("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def processes() -> Iterator[Processes]:
    """This test's child processes; their output is printed at the end (pytest shows it when the test failed)."""
    with Processes(show_output=True) as running:
        yield running


def grant_router_access(control_plane: ControlPlane, namespace: str) -> str:
    """ServiceAccount `router` with the least privilege the router needs; returns a kubeconfig for it, whose user
    is an exec credential plugin (as EKS, GKE and AKS write them) that prints the account's token."""
    token = control_plane.create_service_account_token(namespace, "router")
    read = ["get", "list", "watch"]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "router"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": read},
            {
                "apiGroups": ["inference.networking.k8s.io"],
                "resources": ["inferencepools"],
                "resourceNames": [POOL],
                "verbs": read,
            },
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIG_MAP], "verbs": read},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "router"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "router"},
        "subjects": [{"kind": "ServiceAccount", "name": "router", "namespace": namespace}],
    }
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    ok(control_plane.api("POST", f"{rbac}/roles", role))
    ok(control_plane.api("POST", f"{rbac}/rolebindings", binding))
    kubeconfig = write_exec_kubeconfig(
        control_plane, control_plane.workdir / f"router-{namespace}.kubeconfig", token, namespace
    )
    return str(kubeconfig)


def put_config_map(control_plane: ControlPlane, namespace: str, text: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": {"config.yaml": text}}
    status, _ = control_plane.api("PUT", f"{path}/{CONFIG_MAP}", body)
    if status == 404:
        ok(control_plane.api("POST", path, body))


def test_router_follows_the_inferencepool_and_its_config_map(
    control_plane: ControlPlane, namespace: str, processes: Processes
) -> None:
    (host_a, host_b), port = loopback_hosts_sharing_a_free_port(2)
    for pod, host in (("llm-a", host_a), ("llm-b", host_b)):
        sim = ("sim", "serve", "--host", host, "--port", str(port), "--model", MODEL, "--pod-name", pod)
        processes.start(f"sim-{pod}", kvroute_command(*sim), health_url=f"http://{host}:{port}/health", timeout=30)

    pool = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "selector": {"matchLabels": {"app": POOL}},
            "targetPorts": [{"number": port}],
            "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": 9002}},
        },
    }
    ok(control_plane.api("POST", f"/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools", pool))
    create_pod_serving_at(control_plane, namespace, "llm-a", host_a, {"app": POOL})
    create_pod_serving_at(control_plane, namespace, "llm-b", host_b, {"app": POOL})
    put_config_map(control_plane, namespace, DEFAULT_CONFIG_TEXT)
    kubeconfig = grant_router_access(control_plane, namespace)

    router_port = free_port()
    router = f"http://127.0.0.1:{router_port}"
    # The flags of the operator's router Deployment, with a kubeconfig instead of the in-cluster account.
    processes.start(
        "router",
        kvroute_command(
            *("router", "--discovery", "kubernetes", "--pool-name", POOL, "--pool-namespace", namespace),
            *("--config-configmap", CONFIG_MAP, "--kubeconfig", kubeconfig, "--port", str(router_port)),
            *("--scrape-interval", "20ms"),
        ),
    )

    def readiness() -> dict[str, Any] | None:
        status, _, body = http("GET", f"{router}/readyz")
        return json.loads(body) if status in (200, 503) and body else None

    eventually_sync(
        lambda: (r := readiness()) and r.get("fresh") == 2,
        timeout=30,
        interval=0.05,
        message="both endpoints with fresh metrics",
    )
    # The router authenticated through the exec plugin (once: its credential lasts an hour).
    assert exec_runs(Path(kubeconfig)).read_text().count("run") == 1

    served = set()
    for i in range(20):
        body = {"model": MODEL, "prompt": f"request {i} " + "x" * 64, "max_tokens": 2}
        status, headers, text = http("POST", f"{router}/v1/completions", body)
        assert status == 200, text
        served.add(headers.get("x-inference-pod"))
    assert served <= {"llm-a", "llm-b"}

    # A deleted pod leaves the candidate set within a second.
    ok(control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/llm-a", {"gracePeriodSeconds": 0}))
    deleted_at = time.monotonic()
    eventually_sync(
        lambda: (r := readiness()) and r.get("endpoints") == 1,
        timeout=5,
        interval=0.01,
        message="llm-a to leave the pool",
    )
    assert time.monotonic() - deleted_at < 1.0
    for _ in range(5):
        status, headers, _ = http(
            "POST", f"{router}/v1/completions", {"model": MODEL, "prompt": "after", "max_tokens": 1}
        )
        assert (status, headers.get("x-inference-pod")) == (200, "llm-b")

    # A ConfigMap edit is hot-reloaded; a rejected one is counted and the router keeps serving.
    def reloads(result: str) -> float:
        metrics = http("GET", f"{router}/metrics")[2]
        match = re.search(rf'kvroute_config_reloads_total{{result="{result}"}} (\S+)', metrics)
        return float(match.group(1)) if match else 0.0

    put_config_map(control_plane, namespace, DEFAULT_CONFIG_TEXT.replace("weight: 2\n", "weight: 5\n", 1))
    eventually_sync(
        lambda: reloads("success") == 1, timeout=5, interval=0.05, message="the edited configuration to be reloaded"
    )
    put_config_map(control_plane, namespace, DEFAULT_CONFIG_TEXT.replace("queue-scorer", "no-such-scorer"))
    eventually_sync(
        lambda: reloads("failure") == 1, timeout=5, interval=0.05, message="the rejected configuration to be counted"
    )
    status, _, _ = http("POST", f"{router}/v1/completions", {"model": MODEL, "prompt": "still", "max_tokens": 1})
    assert status == 200

    # Only loopback addresses were ever endpoints.
    metrics = http("GET", f"{router}/metrics")[2]
    routed = set(re.findall(r'kvroute_scheduler_decisions_total{endpoint="([^"]+)"', metrics))
    assert routed and all(ipaddress.IPv4Address(e.rsplit(":", 1)[0]) in LOOPBACK for e in routed)
