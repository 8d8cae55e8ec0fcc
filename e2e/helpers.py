"""Small helpers shared by e2e modules: API calls, loopback addresses, pods serving at them, kubeconfigs and the
pinned kubectl/helm (waits and child processes: `tests.support`)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port

from .controlplane.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ok(result: tuple[int, Any], *expected: int) -> Any:
    status, body = result
    assert status in (expected or (200, 201)), f"HTTP {status}: {body}"
    return body


def loopback_hosts_sharing_a_free_port(count: int) -> tuple[list[str], int]:
    """`count` distinct 127.0.0.x addresses and one port free on all of them (a pool has one set of ports)."""
    hosts = [f"127.0.0.{x}" for x in random.sample(range(100, 250), count)]
    return hosts, port_free_on_all(hosts)


def port_free_on_all(hosts: list[str]) -> int:
    """One port free on every address of `hosts`."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every host")


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One HTTP call; status 0 when the connection failed."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, ""


def write_kubeconfig(control_plane: ControlPlane, path: Path, token: str, namespace: str) -> Path:
    """A kubeconfig for `token` against the control plane, defaulting to `namespace`."""
    cluster = {"server": control_plane.api_url, "certificate-authority": str(control_plane.ca_file)}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "e2e",
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": namespace}}],
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "e2e", "user": {"token": token}}],
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def write_exec_kubeconfig(control_plane: ControlPlane, path: Path, token: str, namespace: str) -> Path:
    """A kubeconfig against the control plane whose user is an `exec` credential plugin, as EKS, GKE and AKS
    write them: a script that prints an ExecCredential with `token` (valid for an hour) and appends a line to
    `exec_runs(path)` each time it runs."""
    plugin = path.with_name(f"{path.stem}-credential-plugin")
    plugin.write_text(
        f"#!{sys.executable}\n"
        "import datetime, json, pathlib\n"
        f"with pathlib.Path({str(exec_runs(path))!r}).open('a') as runs:\n"
        "    runs.write('run\\n')\n"
        "expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)\n"
        f"status = {{'token': {token!r}, 'expirationTimestamp': expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}}\n"
        f"print(json.dumps({{'apiVersion': {EXEC_API_VERSION!r}, 'kind': 'ExecCredential', 'status': status}}))\n"
    )
    plugin.chmod(0o700)
    user = {"exec": {"apiVersion": EXEC_API_VERSION, "command": str(plugin), "interactiveMode": "Never"}}
    cluster = {"server": control_plane.api_url, "certificate-authority": str(control_plane.ca_file)}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "e2e",
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": namespace}}],
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "e2e", "user": user}],
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


def exec_runs(kubeconfig: Path) -> Path:
    """Where the credential plugin of `write_exec_kubeconfig(path=kubeconfig)` counts its runs, a line each."""
    return kubeconfig.with_name(f"{kubeconfig.stem}-credential-plugin.runs")


def create_pod_serving_at(
    control_plane: ControlPlane, namespace: str, name: str, host: str, labels: dict[str, str]
) -> None:
    """A pod that no scheduler touches, then its status as a kubelet would write it: Running, Ready, `host`."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"schedulerName": "kvroute-e2e-unscheduled", "containers": [{"name": "vllm", "image": "kvroute/sim"}]},
    }
    created = ok(control_plane.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    created["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        "podIP": host,
        "podIPs": [{"ip": host}],
    }
    ok(control_plane.api("PUT", f"/api/v1/namespaces/{namespace}/pods/{name}/status", created))


def k8s_tools_dir() -> Path | None:
    """The directory holding the pinned helm and kubectl (scripts/k8s-tools.sh), or None when unavailable."""
    try:
        result = subprocess.run(
            [str(REPO / "scripts" / "k8s-tools.sh")], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = Path(result.stdout.strip()) if result.returncode == 0 else None
    if path is None or not (path / "helm").is_file() or not (path / "kubectl").is_file():
        return None
    return path


def scheduling_profile(
    name: str, namespace: str, pool: str, *, prefix_weight: int = 3, router: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A SchedulingProfile for `pool`: prefix affinity (weight `prefix_weight`), queue, a picker; `router`: its
    `spec.router`, when given."""
    spec: dict[str, Any] = {
        "poolRef": {"name": pool},
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
    }
    if router is not None:
        spec["router"] = router
    return {
        "apiVersion": "kvroute.io/v1alpha1",
        "kind": "SchedulingProfile",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def step_log(scenario: Any, name: str, tag: str, width: int, capsys: Any) -> Iterator[None]:
    """The body of a scenario's autouse `step` fixture: skips a step after a failed one, then prints the step's line
    of the log (`[tag] name  seconds  notes`). `scenario` has `failed` (the failed step's name, or None) and `notes`."""
    if scenario.failed is not None:
        pytest.skip(f"an earlier step failed: {scenario.failed}")
    scenario.notes.clear()
    started = time.monotonic()
    scenario.failed = name  # cleared below when the step returns
    yield
    scenario.failed = None
    with capsys.disabled():
        notes = "; ".join(scenario.notes)
        print(f"\n[{tag}] {name:<{width}} {time.monotonic() - started:6.2f}s  {notes}", flush=True)
