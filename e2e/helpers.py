"""Small helpers shared by e2e modules: bounded waits, API calls, child processes, loopback simulators, kubeconfigs
and the pinned kubectl/helm."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .controlplane.cluster import ControlPlane

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Polls `probe` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def ok(result: tuple[int, Any], *expected: int) -> Any:
    status, body = result
    assert status in (expected or (200, 201)), f"HTTP {status}: {body}"
    return body


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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


class Processes:
    """Child processes (`kvroute ...`), each logging to a file, stopped by PID in reverse order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`kvroute ARGS`, with `env` added to this process's environment."""
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            command = [sys.executable, "-m", "kvroute.cli", *args]
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )
        self.running.append((name, process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop_all(self) -> None:
        for name, process, log in reversed(self.running):
            self.stop(process)
            print(f"----- {name} (pid {process.pid}) {log}\n{log.read_text(errors='replace')[-4000:]}")
        self.running.clear()


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
