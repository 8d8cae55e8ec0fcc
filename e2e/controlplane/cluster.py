"""A real Kubernetes control plane on 127.0.0.1 for the e2e suite.

``ControlPlane.start()`` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which fakes
one node and the pods bound to it) from the binaries that ``build.sh`` produces, and returns once each of them is
healthy and the fake node is Ready. ``stop()`` ends them by PID in reverse order.

Every address the cluster knows is in 127.0.0.0/8, so nothing a test does can reach the network:

- all components listen on 127.0.0.1, on free ports picked at start;
- the service range is ``SERVICE_CIDR``: no kube-proxy runs, so ClusterIPs are never reachable, and a stray dial
  to one ends on loopback;
- kwok reports the node at ``NODE_IP`` and gives pods IPs from ``POD_CIDR``; tests that need a pod to be
  reachable patch its ``status.podIP`` to the 127.0.0.x address where a simulator listens.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .binaries import ControlPlaneError
from .pki import Pki, generate_pki, new_token, write_token_file
from .process import Process

SERVICE_CIDR = "127.2.0.0/16"
POD_CIDR = "127.1.0.0/16"
NODE_IP = "127.0.0.1"
NODE_NAME = "kwok-node-0"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# kube-controller-manager controllers that only act through a cloud provider.
_CLOUD_CONTROLLERS = ("cloud-node-lifecycle-controller", "node-route-controller", "service-lb-controller")
_START_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane:
    """The running cluster. ``kubeconfig`` authenticates as ``admin_token``, a member of ``system:masters``."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.kubeconfig = workdir / "kubeconfig"
        self.admin_token = new_token()
        self.api_port = free_port()
        self.api_url = f"https://127.0.0.1:{self.api_port}"
        self.pki: Pki | None = None
        self._processes: list[Process] = []
        self._opener: urllib.request.OpenerDirector | None = None

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None, "start() first"
        return self.pki.ca_cert

    def start(self) -> None:
        """Starts all components and waits until the cluster can run pods; on failure stops what it started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()

    def exited(self) -> list[str]:
        """Components that have exited although ``stop()`` was not called."""
        return [process.name for process in self._processes if process.exit_code() is not None]

    def pids(self) -> dict[str, int]:
        """PID of each running component, by binary name."""
        return {process.name: process.pid for process in self._processes}

    def logs(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure messages."""
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, exit {p.exit_code()}) {p.log_path}\n{p.log_tail(lines)}"
            for p in self._processes
        )

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> tuple[int, Any]:
        """One API call as the admin (or as ``token``); returns the status code and the decoded JSON body."""
        assert self._opener is not None, "start() first"
        request = urllib.request.Request(
            self.api_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def create_service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600, create: bool = True
    ) -> str:
        """A bound token for ServiceAccount ``namespace/name`` (created first unless ``create`` is False)."""
        if create:
            status, body = self.api(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
            if status not in (201, 409):
                raise ControlPlaneError(f"creating ServiceAccount {namespace}/{name}: {status} {body}")
        status, body = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {status} {body}")
        return str(body["status"]["token"])

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki = generate_pki(self.workdir / "pki", service_ip=str(ipaddress.ip_network(SERVICE_CIDR)[1]))
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

        tokens = {"controller-manager": new_token(), "scheduler": new_token(), "kwok": new_token()}
        write_token_file(
            self.workdir / "tokens.csv",
            [
                (self.admin_token, "kvroute-e2e-admin", ["system:masters"]),
                (tokens["controller-manager"], "system:kube-controller-manager", []),
                (tokens["scheduler"], "system:kube-scheduler", []),
                (tokens["kwok"], "kvroute-e2e-kwok", ["system:masters"]),
            ],
        )
        self._write_kubeconfig(self.kubeconfig, self.admin_token)
        for component, token in tokens.items():
            self._write_kubeconfig(self.workdir / f"{component}.kubeconfig", token)

        etcd_url = self._start_etcd()
        self._start_apiserver(etcd_url)
        self._start_controller_manager()
        self._start_scheduler()
        self._wait_for("the default ServiceAccount", self._default_service_account_exists)
        self._start_kwok()

    def _start_etcd(self) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self._run(
            "etcd",
            "--name=kvroute-e2e",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kvroute-e2e={peer}",
            "--initial-cluster-state=new",
            # Test data is thrown away; skipping fsync makes every write several times faster.
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._wait_for("etcd", lambda: self._http_ok(f"{client}/health"))
        return client

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self._pki()
        self._run(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Endpoints may not hold loopback addresses, so the `kubernetes` Service keeps none (clients outside the
            # cluster use the kubeconfig's URL) instead of failing to reconcile every 10 seconds.
            "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            f"--service-account-issuer={self.api_url}",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_private_key}",
            "--profiling=false",
        )
        self._wait_for("kube-apiserver", lambda: self._http_ok(f"{self.api_url}/readyz", self.admin_token))

    def _start_controller_manager(self) -> None:
        pki = self._pki()
        port = free_port()
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self._run(
            "kube-controller-manager",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # The API server runs no front proxy, so there is no request-header CA to look up.
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--leader-elect=false",
            "--controllers=*," + ",".join(f"-{name}" for name in _CLOUD_CONTROLLERS),
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_private_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            "--profiling=false",
        )
        self._wait_for("kube-controller-manager", lambda: self._http_ok(f"https://127.0.0.1:{port}/healthz"))

    def _start_scheduler(self) -> None:
        pki = self._pki()
        port = free_port()
        kubeconfig = self.workdir / "scheduler.kubeconfig"
        self._run(
            "kube-scheduler",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # The API server runs no front proxy, so there is no request-header CA to look up.
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--leader-elect=false",
            "--profiling=false",
        )
        self._wait_for("kube-scheduler", lambda: self._http_ok(f"https://127.0.0.1:{port}/healthz"))

    def _start_kwok(self) -> None:
        # kwok always reads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok) if it exists; an empty work dir keeps a
        # developer's own kwok configuration out of the tests.
        self._run(
            "kwok",
            f"--config={self.bin_dir / 'kwok-stages.yaml'}",
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--node-ip={NODE_IP}",
            f"--cidr={POD_CIDR}",
            # Unset, the flag is 0 and kwok keeps no Lease: the node's only heartbeat is then a status patch about once
            # a minute, longer than the controller manager's node-monitor grace period (50 s).
            "--node-lease-duration-seconds=40",
            env={**os.environ, "KWOK_WORKDIR": str(self.workdir / "kwok")},
        )
        status, body = self.api("POST", "/api/v1/nodes", _fake_node())
        if status != 201:
            raise ControlPlaneError(f"creating node {NODE_NAME}: {status} {body}")
        self._wait_for(f"node {NODE_NAME} Ready", self._node_ready)

    def _run(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        argv = [str(self.bin_dir / name), *args]
        self._processes.append(Process(name, argv, self.log_dir / f"{name}.log", env))

    def _pki(self) -> Pki:
        assert self.pki is not None
        return self.pki

    def _wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            for process in self._processes:
                if process.exit_code() is not None:
                    raise ControlPlaneError(f"{process.name} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{what} not ready after {_START_TIMEOUT_SECONDS:.0f}s:\n{self.logs()}")
            time.sleep(0.2)

    def _http_ok(self, url: str, token: str | None = None) -> bool:
        assert self._opener is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with self._opener.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _default_service_account_exists(self) -> bool:
        return self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def _node_ready(self) -> bool:
        status, node = self.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _write_kubeconfig(self, path: Path, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "kvroute-e2e", "cluster": {"server": self.api_url, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": "kvroute-e2e", "user": {"token": token}}],
            "contexts": [{"name": "kvroute-e2e", "context": {"cluster": "kvroute-e2e", "user": "kvroute-e2e"}}],
            "current-context": "kvroute-e2e",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)


def _fake_node() -> dict[str, Any]:
    """The node kwok manages; no taint, so ordinary workloads schedule onto it."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": resources, "allocatable": resources},
    }
