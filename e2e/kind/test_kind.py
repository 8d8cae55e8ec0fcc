"""The operator scenario of e2e/test_operator_e2e.py on a kind cluster, through pytest-kubernetes (see README.md).

Everything runs in the cluster from the repository's images: the operator installed by the chart, the router
Deployment it renders, `kvroute sim serve` pods as the model servers and an Envoy pod configured from
docs/envoy/kvroute-gateway.yaml. The test reaches Envoy and the router's metrics through `kubectl port-forward`
on 127.0.0.1. One test function runs the ten steps in order, printing a step log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvroute.bench.envoy import render
from tests.support import eventually_sync, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kvroute"
TAG = os.environ.get("KVROUTE_KIND_IMAGE_TAG", "e2e")
OPERATOR_IMAGE, ROUTER_IMAGE = f"kvroute/operator:{TAG}", f"kvroute/router:{TAG}"
ENVOY_IMAGE = os.environ.get("KVROUTE_KIND_ENVOY_IMAGE", "envoyproxy/envoy:v1.36-latest")
OPERATOR_NS, NS = "kvroute-system", "kvroute-e2e"
POOL, PROFILE, MODEL, SIM_PORT = "llm", "llm", "fake-model", 8000
ROUTER, CONFIG_MAP, SERVICE = f"{POOL}-kvroute", f"{POOL}-kvroute-config", f"{POOL}-epp"
PODS = ("llm-a", "llm-b", "llm-c")
CHILDREN = {
    "configmap": CONFIG_MAP,
    "serviceaccount": ROUTER,
    "role": ROUTER,
    "rolebinding": ROUTER,
    "deployment": ROUTER,
    "service": SERVICE,
}
SHARED_PREFIX = "You are a careful assistant. Answer briefly and cite the manual. " * 30


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


class Cluster:
    """kubectl/helm against the pytest-kubernetes cluster."""

    def __init__(self, k8s: Any) -> None:
        self.k8s = k8s
        self.kubeconfig = str(k8s.kubeconfig)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def get(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    def apply(self, *documents: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents), check=check)

    def condition(self, kind: str) -> dict[str, Any] | None:
        profile = self.get("schedulingprofile", PROFILE) or {}
        conditions = (profile.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)

    def config(self) -> dict[str, Any]:
        parsed: dict[str, Any] = yaml.safe_load((self.get("configmap", CONFIG_MAP) or {})["data"]["config.yaml"])
        return parsed

    @contextmanager
    def port_forward(self, target: str, port: int, namespace: str = NS) -> Iterator[int]:
        local = free_port()
        with self.k8s.port_forwarding(target, local, port, namespace=namespace):
            yield local


def profile(prefix_weight: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "kvroute.io/v1alpha1",
        "kind": "SchedulingProfile",
        "metadata": {"name": PROFILE, "namespace": NS},
        "spec": {
            "poolRef": {"name": POOL},
            "plugins": [
                {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 16}},
                {"type": "queue-scorer"},
                {"type": "max-score-picker"},
            ],
            "schedulingProfiles": [
                {
                    "name": "default",
                    "plugins": [
                        {"pluginRef": "prefix-cache-scorer", "weight": prefix_weight},
                        {"pluginRef": "queue-scorer", "weight": 1},
                        {"pluginRef": "max-score-picker"},
                    ],
                }
            ],
            "router": {"replicas": 1, "mode": "ext-proc", "logLevel": "info"},
        },
    }


def sim_pod(name: str) -> dict[str, Any]:
    command = ["kvroute", "sim", "serve", "--host", "0.0.0.0", "--port", str(SIM_PORT), "--model", MODEL]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "llm"}},
        "spec": {
            "containers": [
                {
                    "name": "sim",
                    "image": ROUTER_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": [*command, "--pod-name", name],
                    "ports": [{"containerPort": SIM_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": SIM_PORT}, "periodSeconds": 1},
                }
            ]
        },
    }


def envoy_objects(router_ip: str, pod_ips: list[str]) -> list[dict[str, Any]]:
    endpoints = ", ".join(
        f"{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {SIM_PORT}}}}}}}}}" for ip in pod_ips
    )
    config = render(
        {
            "ADMIN_ADDRESS": "127.0.0.1",
            "ADMIN_PORT": 9901,
            "LISTEN_ADDRESS": "0.0.0.0",
            "LISTEN_PORT": 8081,
            "ROUTER_ADDRESS": router_ip,
            "ROUTER_PORT": 9002,
            "POOL_ENDPOINTS": f"[{endpoints}]",
            "FAILURE_MODE_ALLOW": "false",
            "REQUEST_BODY_MODE": "FULL_DUPLEX_STREAMED",
            "RESPONSE_BODY_MODE": "FULL_DUPLEX_STREAMED",
            "RESPONSE_TRAILER_MODE": "SEND",
            "ROUTE_TIMEOUT": "300s",
        }
    )
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "envoy", "namespace": NS},
        "data": {"envoy.yaml": yaml.safe_dump(config)},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "envoy", "namespace": NS, "labels": {"app": "envoy"}},
        "spec": {
            "containers": [
                {
                    "name": "envoy",
                    "image": ENVOY_IMAGE,
                    "args": ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart", "-l", "warning"],
                    "ports": [{"containerPort": 8081}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/envoy"}],
                    "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1},
                }
            ],
            "volumes": [{"name": "config", "configMap": {"name": "envoy"}}],
        },
    }
    return [config_map, pod]


def reloads(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'^kvroute_config_reloads_total{result="success"} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class StepLog:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.started = time.monotonic()

    def __call__(self, step: str, note: str) -> None:
        with self.capsys.disabled():
            print(f"\n[kind-e2e] {step:<34} {time.monotonic() - self.started:7.1f}s  {note}", flush=True)


def test_operator_scenario_on_kind(k8s: Any, capsys: pytest.CaptureFixture[str]) -> None:
    k8s.create(timeout=120)  # kind: a new cluster; external: the given kubeconfig
    for image in (OPERATOR_IMAGE, ROUTER_IMAGE):
        k8s.load_image(image)  # `kind load docker-image`; a no-op for an external cluster
    cluster = Cluster(k8s)
    log = StepLog(capsys)

    # 1. The chart: CRDs, RBAC, the operator.
    helm = [
        *("helm", "install", "kvroute", str(CHART), "--kubeconfig", cluster.kubeconfig, "--namespace", OPERATOR_NS),
        *("--create-namespace", "--wait", "--timeout", "5m"),
        *("--set", "operator.image.repository=kvroute/operator", "--set", f"operator.image.tag={TAG}"),
        *("--set", "router.image.repository=kvroute/router", "--set", f"router.image.tag={TAG}"),
    ]
    subprocess.run(helm, check=True, timeout=600)
    cluster.kubectl("create", "namespace", NS)
    log("1 chart installed", "operator Deployment available")

    # 2. Pool and profile → children.
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "targetPorts": [{"number": SIM_PORT}],
            "endpointPickerRef": {"name": SERVICE, "port": {"number": 9002}},
        },
    }
    cluster.apply(pool, profile())
    uid = (cluster.get("inferencepool", POOL) or {})["metadata"]["uid"]

    def children() -> dict[str, dict[str, Any]] | None:
        objs = {kind: cluster.get(kind, name) for kind, name in CHILDREN.items()}
        return {k: v for k, v in objs.items() if v is not None} if all(objs.values()) else None

    objs = eventually_sync(children, timeout=120, interval=1.0, message="the pool's children")
    for kind, obj in objs.items():
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [("InferencePool", uid, True)], kind
    assert [p["type"] for p in cluster.config()["plugins"]] == [
        "prefix-cache-scorer",
        "queue-scorer",
        "max-score-picker",
    ]
    args = objs["deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["router", "--mode"] and "--config-configmap" in args
    assert [p["port"] for p in objs["service"]["spec"]["ports"]] == [9002, 9003, 9090]
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in objs["role"]["rules"])
    eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "True",
        timeout=120,
        interval=1.0,
        message="Accepted=True",
    )
    status = (cluster.get("schedulingprofile", PROFILE) or {})["status"]
    assert status["configHash"] == objs["configmap"]["metadata"]["annotations"]["kvroute.io/config-hash"]
    before = {k: (cluster.get(k, n) or {})["metadata"]["resourceVersion"] for k, n in CHILDREN.items()}
    cluster.kubectl("annotate", "-n", NS, "schedulingprofile", PROFILE, "e2e.kvroute.io/touch=1", "--overwrite")
    time.sleep(5)
    after = {k: (cluster.get(k, n) or {})["metadata"]["resourceVersion"] for k, n in CHILDREN.items()}
    assert {k: v for k, v in after.items() if k != "deployment"} == {
        k: v for k, v in before.items() if k != "deployment"
    }
    log("2 children rendered", "owned by the pool, Accepted=True, no-op reconcile")

    # 3. Model servers.
    cluster.apply(*(sim_pod(name) for name in PODS))
    cluster.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "app=llm", "--timeout=180s")
    log("3 sim pods Ready", ", ".join(PODS))

    # 4. The router, as the operator runs it; least privilege.
    cluster.kubectl("rollout", "status", "-n", NS, f"deployment/{ROUTER}", "--timeout=180s")
    subject = f"system:serviceaccount:{NS}:{ROUTER}"
    can = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", NS, "--as", subject, check=False)
    assert can.stdout.strip() == "no"
    log("4 router rolled out", "secrets: no")

    # 5. Envoy in front, traffic.
    router_ip = (cluster.get("service", SERVICE) or {})["spec"]["clusterIP"]
    pod_ips = [(cluster.get("pod", name) or {})["status"]["podIP"] for name in PODS]
    cluster.apply(*envoy_objects(router_ip, pod_ips))
    cluster.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/envoy", "--timeout=180s")
    router_pod = cluster.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=llm", "-o", "jsonpath={.items[0].metadata.name}"
    ).stdout
    with cluster.port_forward("pod/envoy", 8081) as envoy_port, cluster.port_forward(f"pod/{router_pod}", 9090) as mp:
        url = f"http://127.0.0.1:{envoy_port}/v1/completions"
        metrics_url = f"http://127.0.0.1:{mp}/metrics"

        def complete(prompt: str) -> tuple[int, str | None]:
            status, headers = post(url, {"model": MODEL, "prompt": prompt, "max_tokens": 2})
            return status, headers.get("x-inference-pod")

        eventually_sync(
            lambda: complete("warm up")[0] == 200, timeout=120, interval=1.0, message="a request through Envoy"
        )
        results = [complete(f"request {i} " + "x" * 64) for i in range(20)]
        assert all(status == 200 for status, _ in results), results
        sticky = [complete(SHARED_PREFIX + f"question {i}") for i in range(10)]
        assert all(s == 200 for s, _ in sticky) and len({p for _, p in sticky}) == 1, sticky
        log("5 traffic through Envoy", f"20 x 200; shared prefix -> {sticky[0][1]}")

        # 6. Profile edit under load → hot reload, nothing fails.
        restarts = cluster.kubectl(
            "get", "pod", router_pod, "-n", NS, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"
        ).stdout
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            for i in range(2000):
                if stop.is_set():
                    return
                statuses.append(complete(f"load {i}")[0])

        before_reloads = reloads(metrics_url)
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            cluster.apply(profile(prefix_weight=5))
            eventually_sync(
                lambda: cluster.config()["schedulingProfiles"][0]["plugins"][0]["weight"] == 5,
                timeout=120,
                interval=1.0,
                message="the new weight in the ConfigMap",
            )
            eventually_sync(
                lambda: reloads(metrics_url) > before_reloads, timeout=120, interval=1.0, message="the router to reload"
            )
        finally:
            stop.set()
            worker.join(timeout=60)
        assert statuses and all(s == 200 for s in statuses), statuses
        after_restarts = cluster.kubectl(
            "get", "pod", router_pod, "-n", NS, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"
        ).stdout
        assert after_restarts == restarts
        log("6 hot reload under load", f"{len(statuses)} requests, 0 failed")

        # 7. A deleted pod gets no traffic a second later.
        victim = sticky[0][1] or PODS[0]
        cluster.kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--wait=false")
        time.sleep(1)
        served = {complete(SHARED_PREFIX + f"after {i}")[1] for i in range(20)}
        assert victim not in served, served
        log("7 deleted pod gets no traffic", f"{victim} gone, served by {sorted(map(str, served))}")

    # 8. Invalid profiles.
    config_before = cluster.get("configmap", CONFIG_MAP) or {}
    undeclared = profile(prefix_weight=5)
    undeclared["spec"]["schedulingProfiles"][0]["plugins"][0]["pluginRef"] = "undeclared-scorer"
    rejected = cluster.apply(undeclared, check=False)
    assert rejected.returncode != 0 and "pluginRef must name a plugin" in rejected.stderr
    bad = profile(prefix_weight=5)
    bad["spec"]["plugins"][0]["parameters"] = {"blockSizeTokens": "lots"}
    cluster.apply(bad)
    condition = eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "False" and c,
        timeout=120,
        interval=1.0,
        message="Accepted=False",
    )
    assert condition["message"].startswith("spec.plugins[0].parameters.blockSizeTokens")
    config_after = cluster.get("configmap", CONFIG_MAP) or {}
    assert config_after["metadata"]["resourceVersion"] == config_before["metadata"]["resourceVersion"]
    cluster.apply(profile(prefix_weight=5))
    eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "True",
        timeout=120,
        interval=1.0,
        message="Accepted=True again",
    )
    log("8 invalid profiles", "CEL rejected; semantic Accepted=False; ConfigMap unchanged")

    # 9. Printer columns.
    output = cluster.kubectl("get", "schedulingprofiles", "-n", NS).stdout
    with capsys.disabled():
        print(f"\n{output}", end="")
    assert output.splitlines()[0].split() == ["NAME", "POOL", "ACCEPTED", "READY", "AGE"]
    log("9 printer columns", "NAME POOL ACCEPTED READY AGE")

    # 10. Deleting the pool collects the children.
    cluster.kubectl("delete", "inferencepool", POOL, "-n", NS)
    eventually_sync(
        lambda: all(cluster.get(k, n) is None for k, n in CHILDREN.items()),
        timeout=120,
        interval=1.0,
        message="the children to be collected",
    )
    log("10 pool deleted", "children garbage-collected")
