"""What the kind scenario (test_kind.py) is made of: the cluster's config, kubectl and helm against it, and the
objects it applies (the profile, the simulator pods, Envoy)."""

from __future__ import annotations

import json
import os
import re
import subprocess
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
from tests.support import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "kvroute"
TAG = os.environ.get("KVROUTE_KIND_IMAGE_TAG", "e2e")
OPERATOR_IMAGE, ROUTER_IMAGE, SIM_IMAGE = (f"kvroute/{name}:{TAG}" for name in ("operator", "router", "simulator"))
ENVOY_IMAGE = os.environ.get("KVROUTE_KIND_ENVOY_IMAGE", f"kvroute/envoy:{TAG}")
# The node image of build-node-image.sh (no registry is reachable, so kind's default image cannot be pulled).
NODE_IMAGE = os.environ.get("KVROUTE_KIND_NODE_IMAGE", "")
RELEASE, OPERATOR_NS, NS = "kvroute", "kvroute-system", "kvroute-e2e"
POOL, PROFILE, MODEL, SIM_PORT = "llm", "llm", "fake-model", 8000
ROUTER, CONFIG_MAP, SERVICE = f"{POOL}-kvroute", f"{POOL}-kvroute-config", f"{POOL}-epp"
ROUTER_PODS = f"app.kubernetes.io/instance={POOL}"
CHILDREN = {
    "configmap": CONFIG_MAP,
    "serviceaccount": ROUTER,
    "role": ROUTER,
    "rolebinding": ROUTER,
    "deployment": ROUTER,
    "service": SERVICE,
}


def kind_config(name: str, node_image: str) -> dict[str, Any]:
    """One node, kindnetd replaced by a static ptp CNI config (cni-ptp.conflist) for the pod subnet's first /24,
    which is the one node's podCIDR; the API server on 127.0.0.1 only."""
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": name,
        "networking": {"disableDefaultCNI": True, "podSubnet": "10.244.0.0/16", "apiServerAddress": "127.0.0.1"},
        "nodes": [
            {
                "role": "control-plane",
                "image": node_image,
                "extraMounts": [
                    {
                        "hostPath": str(HERE / "cni-ptp.conflist"),
                        "containerPath": "/etc/cni/net.d/10-kvroute-ptp.conflist",
                        "readOnly": True,
                    }
                ],
            }
        ],
    }


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


def metric(metrics_url: str, sample: str) -> float:
    """The value of SAMPLE (`name` or `name{label="value"}`; a bare name matches its first sample), 0 if absent."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    labels = "" if "{" in sample else r"(?:\{[^}]*\})?"
    match = re.search(rf"^{re.escape(sample)}{labels} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Cluster:
    """kubectl and helm against the pytest-kubernetes cluster."""

    def __init__(self, k8s: Any) -> None:
        self.k8s = k8s
        self.kubeconfig = str(k8s.kubeconfig)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def helm(self, *args: str) -> None:
        subprocess.run(["helm", *args, "--kubeconfig", self.kubeconfig], check=True, timeout=600)

    def get(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    def names(self, kinds: str, *selection: str) -> list[str]:
        """`kubectl get KINDS SELECTION -o name`: what exists, as kind/name lines."""
        return self.kubectl("get", kinds, *selection, "-o", "name").stdout.split()

    def apply(self, *documents: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents), check=check)

    def condition(self, kind: str) -> dict[str, Any] | None:
        profile = self.get("schedulingprofile", PROFILE) or {}
        conditions = (profile.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)

    def config(self) -> dict[str, Any]:
        parsed: dict[str, Any] = yaml.safe_load((self.get("configmap", CONFIG_MAP) or {})["data"]["config.yaml"])
        return parsed

    def router_pods(self) -> list[dict[str, Any]]:
        """The router pods that are Ready and not being deleted."""
        pods = json.loads(self.kubectl("get", "pods", "-n", NS, "-l", ROUTER_PODS, "-o", "json").stdout)["items"]
        return [
            pod
            for pod in pods
            if "deletionTimestamp" not in pod["metadata"]
            and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        ]

    @contextmanager
    def port_forward(self, target: str, port: int, namespace: str = NS) -> Iterator[int]:
        local = free_port()
        with self.k8s.port_forwarding(target, local, port, namespace=namespace):
            yield local


def profile(prefix_weight: int = 3, replicas: int = 1) -> dict[str, Any]:
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
            # The default request (500m) would leave no room on a 2-core node for a second replica and a surge pod.
            "router": {
                "replicas": replicas,
                "mode": "ext-proc",
                "logLevel": "info",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
            },
        },
    }


def sim_pod(name: str) -> dict[str, Any]:
    """A model server: the simulator image (its entrypoint is `kvroute sim serve`) naming itself in
    x-inference-pod."""
    args = ["--host", "0.0.0.0", "--port", str(SIM_PORT), "--model", MODEL, "--pod-name", name]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "llm"}},
        "spec": {
            "containers": [
                {
                    "name": "sim",
                    "image": SIM_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "ports": [{"containerPort": SIM_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": SIM_PORT}, "periodSeconds": 1},
                }
            ]
        },
    }


def envoy_objects(name: str, router_ip: str, pod_ips: list[str]) -> list[dict[str, Any]]:
    """An Envoy pod configured from docs/envoy/kvroute-gateway.yaml (ext_proc FULL_DUPLEX_STREAMED over TLS to
    router_ip:9002, ORIGINAL_DST to the pods) and its ConfigMap, both called NAME."""
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
        "metadata": {"name": name, "namespace": NS},
        "data": {"envoy.yaml": yaml.safe_dump(config)},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "envoy"}},
        "spec": {
            "containers": [
                {
                    "name": "envoy",
                    "image": ENVOY_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart", "-l", "warning"],
                    "ports": [{"containerPort": 8081}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/envoy"}],
                    "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1},
                }
            ],
            "volumes": [{"name": "config", "configMap": {"name": name}}],
        },
    }
    return [config_map, pod]


class StepLog:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.started = time.monotonic()

    def __call__(self, step: str, note: str) -> None:
        with self.capsys.disabled():
            print(f"\n[kind-e2e] {step:<34} {time.monotonic() - self.started:7.1f}s  {note}", flush=True)
