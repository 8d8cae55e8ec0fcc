"""The operator end to end, against the real control plane: chart CRDs and the chart's operator RBAC, the operator
process logged in as the chart's ServiceAccount, an InferencePool + SchedulingProfile rendered into a router
Deployment, the router run exactly as that Deployment says (as its own least-privilege ServiceAccount), a real
Envoy in front of it (ext_proc over TLS, ORIGINAL_DST) and `kvroute sim serve` model servers on 127.0.0.x. Then
two router replicas with fleet sync: one router process per pod kwok runs for the Deployment (on the pod's
127.1.x.y address, with its downward-API environment), which find each other through the pod watch.

The steps run in file order and share module-scoped state; once a step fails the later ones are skipped. Every
process is stopped by PID; every address is in 127.0.0.0/8. Each step prints one line of the step log (with its
duration) straight to the terminal.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import Processes, eventually_sync, free_port, kvroute_command

from .controlplane.cluster import ControlPlane
from .helpers import (
    REPO,
    create_pod_serving_at,
    exec_runs,
    http,
    in_ci,
    k8s_tools_dir,
    loopback_hosts_sharing_a_free_port,
    ok,
    port_free_on_all,
    scheduling_profile,
    step_log,
    write_exec_kubeconfig,
    write_kubeconfig,
)

pytestmark = pytest.mark.e2e

OPERATOR_NS, NS = "kvroute-system", "operator-e2e"
OPERATOR_SA = "kvroute-operator"  # the chart's ServiceAccount for release "kvroute"
POOL, PROFILE, MODEL, EPP_PORT = "llm", "llm", "fake-model", 9002
ROUTER, CONFIG_MAP = f"{POOL}-kvroute", f"{POOL}-kvroute-config"
PODS = ("llm-a", "llm-b", "llm-c")
ROUTER_IMAGE = "kvroute/router:e2e"
CHART = REPO / "charts" / "kvroute"
CRD_NAMES = (
    "inferencepools.inference.networking.k8s.io",
    "inferenceobjectives.inference.networking.x-k8s.io",
    "schedulingprofiles.kvroute.io",
)
POOLS_PATH = f"/apis/inference.networking.k8s.io/v1/namespaces/{NS}/inferencepools"
PROFILES_PATH = f"/apis/kvroute.io/v1alpha1/namespaces/{NS}/schedulingprofiles"
OBJECTIVES_PATH = f"/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/{NS}/inferenceobjectives"
CHILDREN = {
    "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps/{CONFIG_MAP}",
    "ServiceAccount": f"/api/v1/namespaces/{NS}/serviceaccounts/{ROUTER}",
    "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{ROUTER}",
    "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{ROUTER}",
    "Deployment": f"/apis/apps/v1/namespaces/{NS}/deployments/{ROUTER}",
    "Service": f"/api/v1/namespaces/{NS}/services/{POOL}-epp",
}
TOUCH = "e2e.kvroute.io/touch"
FLEET_SELECTOR = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/name=kvroute-router"
SHARED_PREFIX = "You are a careful assistant. Answer briefly and cite the manual. " * 30


@dataclass
class Scenario:
    cp: ControlPlane
    tools: Path
    workdir: Path
    processes: Processes
    hosts: list[str]
    sim_port: int
    failed: str | None = None
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.tools / "kubectl"), "--kubeconfig", str(self.cp.kubeconfig), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.cp.api("GET", path)
        if status == 404:
            return None
        assert status == 200, f"GET {path}: {status} {body}"
        return dict(body)

    def profile_condition(self, kind: str) -> dict[str, Any] | None:
        profile = self.get(f"{PROFILES_PATH}/{PROFILE}") or {}
        conditions = (profile.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture(scope="module")
def scenario(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tools = k8s_tools_dir()
    if tools is None:
        message = "helm/kubectl unavailable (scripts/k8s-tools.sh failed)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("operator-e2e")
    hosts, port = loopback_hosts_sharing_a_free_port(len(PODS))
    state = Scenario(control_plane, tools, workdir, Processes(show_output=True), hosts, port)
    for namespace in (OPERATOR_NS, NS):
        ok(
            control_plane.api(
                "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            ),
            201,
            409,
        )
    try:
        yield state
    finally:
        for stop in state.values.pop("cleanups", []):
            stop()
        state.processes.stop_all()
        for namespace in (NS, OPERATOR_NS):
            control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}")


@pytest.fixture(autouse=True)
def step(scenario: Scenario, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Skips a step after a failed one; prints the step's line of the log."""
    yield from step_log(scenario, request.node.name, "operator-e2e", 40, capsys)


def test_01_chart_crds_rbac_and_operator(scenario: Scenario) -> None:
    s = scenario
    crd_files = sorted((CHART / "crds").glob("*.yaml")) + sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert len(crd_files) >= 3, crd_files
    args = [arg for path in crd_files for arg in ("-f", str(path))]
    # Server-side: the InferencePool CRD may already exist, created by another module of the session.
    s.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kvroute-e2e", *args)

    def established(name: str) -> bool:
        conditions = (
            (s.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}).get("status") or {}
        ).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for name in CRD_NAMES:
        eventually_sync(partial(established, name), timeout=30, interval=0.05, message=f"CRD {name} established")

    helm = subprocess.run(
        [
            *(str(s.tools / "helm"), "template", "kvroute", str(CHART), "--namespace", OPERATOR_NS),
            *("--show-only", "templates/rbac.yaml", "--show-only", "templates/serviceaccount.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    rendered = [doc for doc in yaml.safe_load_all(helm.stdout) if doc]
    kinds = sorted(doc["kind"] for doc in rendered)
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} <= set(kinds), kinds
    assert all(doc["kind"] != "ServiceAccount" or doc["metadata"]["name"] == OPERATOR_SA for doc in rendered)
    s.kubectl("apply", "-f", "-", stdin=helm.stdout)

    token = s.cp.create_service_account_token(OPERATOR_NS, OPERATOR_SA, create=False)
    # The operator's identity is the chart's: it may not read Secrets, it may read pods.
    assert s.cp.api("GET", f"/api/v1/namespaces/{NS}/secrets", token=token)[0] == 403
    assert s.cp.api("GET", f"/api/v1/namespaces/{NS}/pods", token=token)[0] == 200
    # An exec credential plugin, as on EKS, GKE and AKS: kopf and the operator's own client both log in with it.
    kubeconfig = write_exec_kubeconfig(s.cp, s.workdir / "operator.kubeconfig", token, OPERATOR_NS)
    s.values["operator_kubeconfig"] = kubeconfig
    operator = s.processes.start(
        "operator",
        kvroute_command(
            *("operator", "run", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--router-image", ROUTER_IMAGE),
            # Both listeners bind 0.0.0.0 (no host flag); the test keeps to loopback and leaves them off.
            *("--metrics-port", "0", "--health-port", "0", "--standalone", "--log-level", "info"),
        ),
    )
    s.values["operator"] = operator
    time.sleep(1.0)
    assert operator.running, s.processes["operator"].output()
    s.note(f"{len(crd_files)} CRD files, RBAC {kinds}, operator pid {operator.pid} as sa {OPERATOR_NS}/{OPERATOR_SA}")


def _pool() -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "targetPorts": [{"number": 0}],
            "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": EPP_PORT}},
        },
    }


def _profile(prefix_weight: int = 3, **router: Any) -> dict[str, Any]:
    return scheduling_profile(
        PROFILE,
        NS,
        POOL,
        prefix_weight=prefix_weight,
        router={"replicas": 1, "mode": "ext-proc", "logLevel": "info", **router},
    )


def _apply(s: Scenario, *documents: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    return s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents), check=check)


def _config(s: Scenario) -> dict[str, Any]:
    config_map = s.get(CHILDREN["ConfigMap"]) or {}
    parsed: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return parsed


def _versions(s: Scenario) -> dict[str, Any]:
    """What a no-op reconcile must leave alone: each child's resourceVersion, and the profile's status. The
    Deployment's resourceVersion moves with its rollout status (and its generation with the test's own annotation),
    so for it: the spec, labels, the operator's annotations and the operator's managedFields entry."""
    versions: dict[str, Any] = {}
    for kind, path in CHILDREN.items():
        obj = s.get(path) or {}
        meta = obj.get("metadata", {})
        if kind == "Deployment":
            annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != TOUCH}
            applied = [f for f in meta.get("managedFields") or [] if f["manager"] == "kvroute-operator"]
            versions[kind] = json.dumps([obj.get("spec"), meta.get("labels"), annotations, applied], sort_keys=True)
        else:
            versions[kind] = meta.get("resourceVersion")
    versions["profile.status"] = json.dumps((s.get(f"{PROFILES_PATH}/{PROFILE}") or {}).get("status"), sort_keys=True)
    return versions


def test_02_pool_and_profile_render_the_children(scenario: Scenario) -> None:
    s = scenario
    pool = _pool()
    pool["spec"]["targetPorts"] = [{"number": s.sim_port}]
    _apply(s, pool, _profile())
    pool_obj = eventually_sync(lambda: s.get(f"{POOLS_PATH}/{POOL}"), timeout=30, interval=0.05, message="the pool")

    def all_children() -> dict[str, dict[str, Any]] | None:
        objs = {kind: s.get(path) for kind, path in CHILDREN.items()}
        return {k: v for k, v in objs.items() if v is not None} if all(objs.values()) else None

    children = eventually_sync(all_children, timeout=60, interval=0.2, message="every child of the pool")
    for kind, obj in children.items():
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("InferencePool", POOL, pool_obj["metadata"]["uid"], True)
        ], kind

    config = _config(s)
    assert [p["type"] for p in config["plugins"]] == ["prefix-cache-scorer", "queue-scorer", "max-score-picker"]
    weights = {p["pluginRef"]: p.get("weight") for p in config["schedulingProfiles"][0]["plugins"]}
    assert weights == {"prefix-cache-scorer": 3, "queue-scorer": 1, "max-score-picker": None}

    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == ROUTER_IMAGE
    assert container["command"] == ["kvroute"]
    assert container["args"] == [
        *("router", "--mode", "ext-proc", "--discovery", "kubernetes", "--pool-name", POOL, "--pool-namespace", NS),
        *("--config-configmap", CONFIG_MAP, "--host", "0.0.0.0", "--log-level", "info", "--workers", "1"),
    ]
    assert children["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == ROUTER
    ports = [(p["name"], p["port"], p["targetPort"]) for p in children["Service"]["spec"]["ports"]]
    assert ports == [
        ("grpc-ext-proc", EPP_PORT, "grpc-ext-proc"),
        ("grpc-health", 9003, "grpc-health"),
        ("http-metrics", 9090, "http-metrics"),
    ]
    read = ["get", "list", "watch"]
    assert children["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {
            "apiGroups": ["inference.networking.k8s.io"],
            "resources": ["inferencepools"],
            "resourceNames": [POOL],
            "verbs": read,
        },
        {"apiGroups": ["inference.networking.x-k8s.io"], "resources": ["inferenceobjectives"], "verbs": read},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIG_MAP], "verbs": read},
    ]
    assert children["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": ROUTER, "namespace": NS}]

    def accepted() -> dict[str, Any] | None:
        profile = s.get(f"{PROFILES_PATH}/{PROFILE}") or {}
        status = profile.get("status") or {}
        condition = next((c for c in status.get("conditions") or [] if c["type"] == "Accepted"), None)
        return profile if condition and condition["status"] == "True" else None

    profile = eventually_sync(accepted, timeout=30, interval=0.2, message="the profile to be Accepted")
    status = profile["status"]
    assert status["observedGeneration"] == profile["metadata"]["generation"]
    config_hash = children["ConfigMap"]["metadata"]["annotations"]["kvroute.io/config-hash"]
    assert status["configHash"] == config_hash and status["routerDeployment"] == ROUTER
    # kwok runs the router pods (it fakes their containers), so the Deployment becomes available.
    eventually_sync(
        lambda: (c := s.profile_condition("Ready")) and c["status"] == "True",
        timeout=60,
        interval=0.2,
        message="the profile to be Ready",
    )

    # Re-running the reconcile changes nothing: touch the profile and the Deployment (whose every event
    # reconciles the pool), then compare.
    time.sleep(1.0)
    before = _versions(s)
    reconciles = s.processes["operator"].output().count("router_deployment_event")
    s.kubectl("annotate", "-n", NS, "schedulingprofile", PROFILE, f"{TOUCH}=1", "--overwrite")
    s.kubectl("annotate", "-n", NS, "deployment", ROUTER, f"{TOUCH}=1", "--overwrite")
    eventually_sync(
        lambda: s.processes["operator"].output().count("router_deployment_event") > reconciles,
        timeout=15,
        interval=0.1,
        message="the operator to reconcile the touched Deployment",
    )
    time.sleep(2.0)
    after = _versions(s)
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    # kopf's login and the operator's client each ran the exec plugin; its token lasts an hour, so no more.
    runs = exec_runs(s.values["operator_kubeconfig"]).read_text().count("run")
    assert runs == 2, runs
    s.note(f"6 children owned by the pool, Accepted+Ready, configHash {config_hash[:12]}, no-op reconcile ok")


def test_03_model_server_pods(scenario: Scenario) -> None:
    s = scenario
    for pod, host in zip(PODS, s.hosts, strict=True):
        sim = ("sim", "serve", "--host", host, "--port", str(s.sim_port), "--model", MODEL, "--pod-name", pod)
        s.processes.start(
            f"sim-{pod}", kvroute_command(*sim), health_url=f"http://{host}:{s.sim_port}/health", timeout=30
        )
    for pod, host in zip(PODS, s.hosts, strict=True):
        create_pod_serving_at(s.cp, NS, pod, host, {"app": "llm"})
    s.note(f"pods {', '.join(f'{p}={h}' for p, h in zip(PODS, s.hosts, strict=True))} port {s.sim_port}")


def _router_metric(s: Scenario, name: str, labels: str) -> float:
    text = http("GET", f"http://127.0.0.1:{s.values['router_metrics_port']}/metrics")[2]
    match = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_04_router_runs_as_the_deployment_says(scenario: Scenario) -> None:
    s = scenario
    deployment = s.get(CHILDREN["Deployment"]) or {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    host_at = args.index("--host") + 1
    assert args[host_at] == "0.0.0.0"
    args[host_at] = "127.0.0.1"
    grpc, health, metrics = free_port(), free_port(), free_port()
    s.values.update(router_grpc_port=grpc, router_metrics_port=metrics)
    token = s.cp.create_service_account_token(
        NS, deployment["spec"]["template"]["spec"]["serviceAccountName"], create=False
    )
    kubeconfig = write_kubeconfig(s.cp, s.workdir / "router.kubeconfig", token, NS)

    # RBAC is the operator's Role: no Secrets, nothing of another pool's, but its own ConfigMap.
    assert s.cp.api("GET", f"/api/v1/namespaces/{NS}/secrets", token=token)[0] == 403
    assert s.cp.api("GET", f"/api/v1/namespaces/{NS}/configmaps", token=token)[0] == 403
    assert s.cp.api("GET", CHILDREN["ConfigMap"], token=token)[0] == 200
    assert s.cp.api("GET", f"/api/v1/namespaces/{OPERATOR_NS}/pods", token=token)[0] == 403

    router = s.processes.start(
        "router",
        kvroute_command(
            *args,
            *("--kubeconfig", str(kubeconfig), "--grpc-port", str(grpc), "--grpc-health-port", str(health)),
            *("--metrics-port", str(metrics)),
        ),
    )
    s.values["router"] = router
    eventually_sync(
        lambda: router.running and http("GET", f"http://127.0.0.1:{metrics}/metrics")[0] == 200,
        timeout=30,
        interval=0.1,
        message="the router's metrics port",
    )
    assert router.running, s.processes["router"].output()
    s.note(f"router pid {router.pid} `kvroute {' '.join(args)}` grpc {grpc} metrics {metrics}; secrets 403")


def _complete(s: Scenario, prompt: str, timeout: float = 10.0) -> tuple[int, str | None]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    status, headers, _ = http("POST", f"{s.values['envoy_url']}/v1/completions", body, timeout=timeout)
    return status, headers.get("x-inference-pod")


def test_05_traffic_through_envoy(scenario: Scenario) -> None:
    from kvroute.bench import envoy as envoy_tools

    s = scenario
    try:
        envoy_tools.envoy_binary()
    except envoy_tools.EnvoyMissing as error:
        if in_ci():
            pytest.fail(str(error))
        pytest.skip(str(error))
    port, admin = free_port(), free_port()
    config = envoy_tools.gateway(
        host="127.0.0.1",
        port=port,
        admin_port=admin,
        router=("127.0.0.1", s.values["router_grpc_port"]),
        pool=[(h, s.sim_port) for h in s.hosts],
    )
    process = envoy_tools.EnvoyProcess("127.0.0.1", port, admin, config)
    s.values.setdefault("cleanups", []).append(process.stop)
    process.start()
    s.values["envoy_url"] = process.base_url
    s.values["envoy"] = process
    eventually_sync(
        lambda: _complete(s, "warm up")[0] == 200,
        timeout=30,
        interval=0.2,
        message="a request through Envoy to succeed",
    )
    served: dict[str | None, int] = {}
    for i in range(30):
        status, pod = _complete(s, f"request {i} " + "x" * 64)
        assert status == 200
        served[pod] = served.get(pod, 0) + 1
    assert set(served) <= set(PODS), served
    sticky = [_complete(s, SHARED_PREFIX + f"question {i}") for i in range(10)]
    assert all(status == 200 for status, _ in sticky), sticky
    assert len({pod for _, pod in sticky}) == 1, sticky
    s.values["sticky_pod"] = sticky[0][1]
    streams = process.stat("http.inference_gateway.ext_proc.streams_started") or 0
    assert streams >= 41, streams  # every request went through the router
    metrics = http("GET", f"http://127.0.0.1:{s.values['router_metrics_port']}/metrics")[2]
    routed = set(re.findall(r'kvroute_scheduler_decisions_total{endpoint="([^"]+)"', metrics))
    assert routed and routed <= {f"{h}:{s.sim_port}" for h in s.hosts}, routed  # the pods' patched loopback IPs
    s.note(
        f"30 distinct prompts -> {dict(sorted(served.items(), key=str))}; 10 same-prefix -> {sticky[0][1]} x10; "
        f"{streams} ext_proc streams"
    )


class Load:
    """Sequential requests through Envoy in a thread, until stopped or `limit` requests."""

    def __init__(self, send: Callable[[int], int], limit: int = 5000) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(send, limit), daemon=True)

    def _run(self, send: Callable[[int], int], limit: int) -> None:
        for i in range(limit):
            if self._stop.is_set():
                return
            self.statuses.append(send(i))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_06_profile_edit_hot_reloads_under_load(scenario: Scenario) -> None:
    s = scenario
    router = s.values["router"]
    before = _router_metric(s, "kvroute_config_reloads_total", 'result="success"')
    hash_before = (s.get(CHILDREN["ConfigMap"]) or {})["metadata"]["annotations"]["kvroute.io/config-hash"]
    with Load(lambda i: _complete(s, f"load {i} " + "y" * 200)[0]) as load:
        time.sleep(0.5)
        started = time.monotonic()
        _apply(s, _profile(prefix_weight=5))
        eventually_sync(
            lambda: (
                {p["pluginRef"]: p.get("weight") for p in _config(s)["schedulingProfiles"][0]["plugins"]}.get(
                    "prefix-cache-scorer"
                )
                == 5
            ),
            timeout=30,
            interval=0.1,
            message="the ConfigMap to carry the new weight",
        )
        changed = time.monotonic() - started
        eventually_sync(
            lambda: _router_metric(s, "kvroute_config_reloads_total", 'result="success"') > before,
            timeout=30,
            interval=0.1,
            message="the router to hot-reload",
        )
        reloaded = time.monotonic() - started
        time.sleep(0.5)
    failed = [status for status in load.statuses if status != 200]
    assert load.statuses and not failed, f"{len(failed)} of {len(load.statuses)} failed: {set(failed)}"
    assert router.running
    hash_after = (s.get(CHILDREN["ConfigMap"]) or {})["metadata"]["annotations"]["kvroute.io/config-hash"]
    assert hash_after != hash_before
    eventually_sync(
        lambda: (
            (p := s.get(f"{PROFILES_PATH}/{PROFILE}") or {}).get("status", {}).get("configHash") == hash_after
            and p["status"]["observedGeneration"] == p["metadata"]["generation"]
        ),
        timeout=15,
        interval=0.1,
        message="the profile's status to follow",
    )
    s.note(
        f"weight 3->5: ConfigMap after {changed:.2f}s, reload after {reloaded:.2f}s; "
        f"{len(load.statuses)} requests under load, 0 failed; router pid unchanged"
    )


def test_07_deleted_pod_gets_no_traffic(scenario: Scenario) -> None:
    s = scenario
    victim = s.values.get("sticky_pod") or PODS[0]
    ok(s.cp.api("DELETE", f"/api/v1/namespaces/{NS}/pods/{victim}", {"gracePeriodSeconds": 0}))
    time.sleep(1.0)
    results = [_complete(s, (SHARED_PREFIX if i % 2 else "") + f"after delete {i}") for i in range(40)]
    assert all(status == 200 for status, _ in results), results
    pods = {pod for _, pod in results}
    assert victim not in pods and pods <= set(PODS), pods
    s.note(f"deleted {victim} (it served the shared prefix); 40 requests 1s later -> {sorted(map(str, pods))}")


def test_08_invalid_profiles_are_rejected(scenario: Scenario) -> None:
    s = scenario
    before = s.get(CHILDREN["ConfigMap"]) or {}

    # Caught by the CRD's CEL rule at apply time.
    undeclared = _profile(prefix_weight=5)
    undeclared["spec"]["schedulingProfiles"][0]["plugins"][0]["pluginRef"] = "undeclared-scorer"
    result = _apply(s, undeclared, check=False)
    assert result.returncode != 0
    assert "pluginRef must name a plugin of spec.plugins" in result.stderr, result.stderr
    cel = result.stderr.strip().splitlines()[-1]

    # Only the operator can tell: a parameter of the wrong type.
    bad = _profile(prefix_weight=5)
    bad["spec"]["plugins"][0]["parameters"] = {"blockSizeTokens": "lots"}
    _apply(s, bad)
    generation = (s.get(f"{PROFILES_PATH}/{PROFILE}") or {})["metadata"]["generation"]
    condition = eventually_sync(
        lambda: (
            (c := s.profile_condition("Accepted"))
            and c["status"] == "False"
            and c.get("observedGeneration") == generation
            and c
        ),
        timeout=30,
        interval=0.1,
        message="Accepted=False",
    )
    assert condition["reason"] == "InvalidConfig"
    assert condition["message"].startswith("spec.plugins[0].parameters.blockSizeTokens"), condition["message"]
    time.sleep(1.0)
    after = s.get(CHILDREN["ConfigMap"]) or {}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]
    assert s.values["router"].running

    # Fixed again, it is accepted.
    _apply(s, _profile(prefix_weight=5))
    eventually_sync(
        lambda: (c := s.profile_condition("Accepted")) and c["status"] == "True",
        timeout=30,
        interval=0.1,
        message="Accepted=True again",
    )
    s.note(f"CEL: {cel[:110]}...; semantic: Accepted=False {condition['reason']}: {condition['message'][:80]}")


def test_09_kubectl_printer_columns(scenario: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    s = scenario
    eventually_sync(
        lambda: (c := s.profile_condition("Ready")) and c["status"] == "True",
        timeout=60,
        interval=0.05,
        message="Ready=True",
    )
    output = s.kubectl("get", "schedulingprofiles", "-n", NS).stdout
    with capsys.disabled():
        print(f"\n$ kubectl get schedulingprofiles -n {NS}\n{output}", end="", flush=True)
    header, *rows = output.splitlines()
    assert header.split() == ["NAME", "POOL", "ACCEPTED", "READY", "AGE"]
    assert rows and rows[0].split()[:4] == [PROFILE, POOL, "True", "True"]
    short = s.kubectl("get", "schedprof", "-n", NS, "-o", "name").stdout.strip()
    assert short == f"schedulingprofile.kvroute.io/{PROFILE}"
    s.note("header NAME POOL ACCEPTED READY AGE")


def _objective(name: str, pool: str, priority: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def test_10_inference_objectives_reach_the_router_and_the_profile_status(scenario: Scenario) -> None:
    s = scenario
    router_log = s.processes["router"]
    mapping = f"InferenceObjectives of InferencePool {NS}/{POOL}: "

    def router_says(listed: str) -> bool:
        return f"{mapping}{listed}\n" in router_log.output()

    def status_lists(expected: list[dict[str, Any]]) -> bool:
        status = (s.get(f"{PROFILES_PATH}/{PROFILE}") or {}).get("status") or {}
        return status.get("objectives") == expected and status.get("objectiveCount") == len(expected)

    started = time.monotonic()
    _apply(s, _objective("chat", POOL, 5), _objective("bulk", POOL), _objective("elsewhere", "another-pool", 9))
    eventually_sync(
        lambda: router_says("bulk=0, chat=5"), timeout=30, interval=0.1, message="the router to map the objectives"
    )
    seen_by_router = time.monotonic() - started
    eventually_sync(
        lambda: status_lists([{"name": "bulk", "priority": 0}, {"name": "chat", "priority": 5}]),
        timeout=30,
        interval=0.1,
        message="the profile's status to list the pool's objectives",
    )
    output = s.kubectl("get", "inferenceobjectives", "-n", NS).stdout
    header, *rows = output.splitlines()
    assert header.split() == ["NAME", "INFERENCE", "POOL", "PRIORITY", "AGE"]
    # Columns Inference Pool and Priority (blank when unset), then the age.
    assert {row.split()[0]: row.split()[1:-1] for row in rows} == {
        "bulk": [POOL],
        "chat": [POOL, "5"],
        "elsewhere": ["another-pool", "9"],
    }

    ok(s.cp.api("DELETE", f"{OBJECTIVES_PATH}/chat"))
    eventually_sync(lambda: router_says("bulk=0"), timeout=30, interval=0.1, message="the router to drop chat")
    eventually_sync(
        lambda: status_lists([{"name": "bulk", "priority": 0}]),
        timeout=30,
        interval=0.1,
        message="the profile's status to drop chat",
    )
    ok(s.cp.api("DELETE", f"{OBJECTIVES_PATH}/bulk"))
    ok(s.cp.api("DELETE", f"{OBJECTIVES_PATH}/elsewhere"))
    eventually_sync(lambda: router_says("none"), timeout=30, interval=0.1, message="the router to have none")
    eventually_sync(lambda: status_lists([]), timeout=30, interval=0.1, message="the profile's status to have none")
    assert "elsewhere" not in router_log.output()
    s.note(f"router mapped bulk=0, chat=5 after {seen_by_router:.2f}s; status followed create and delete")


def _metric(url: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", http("GET", f"{url}/metrics")[2], re.MULTILINE)
    return float(match.group(1)) if match else None


def _router_pods(s: Scenario, template_args: list[str]) -> list[dict[str, Any]] | None:
    """The router pods of the Deployment's current template, once exactly two run Ready with an address."""
    query = urllib.parse.urlencode({"labelSelector": FLEET_SELECTOR})
    pods = (s.get(f"/api/v1/namespaces/{NS}/pods?{query}") or {}).get("items") or []
    current = [
        pod
        for pod in pods
        if pod["spec"]["containers"][0].get("args") == template_args
        and not pod["metadata"].get("deletionTimestamp")
        and (pod.get("status") or {}).get("podIP")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
    ]
    return current if len(current) == 2 and len(pods) == 2 else None


def test_11_router_replicas_share_routing_state(scenario: Scenario) -> None:
    s = scenario
    _apply(s, _profile(prefix_weight=5, replicas=2, mode="proxy"))

    def rendered() -> dict[str, Any] | None:
        deployment = s.get(CHILDREN["Deployment"]) or {}
        return deployment if deployment.get("spec", {}).get("replicas") == 2 else None

    deployment = eventually_sync(rendered, timeout=30, interval=0.2, message="the Deployment to have 2 replicas")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    assert args[1:3] == ["--mode", "proxy"]
    assert args[-4:] == ["--fleet-peer-selector", FLEET_SELECTOR, "--fleet-port", "9005"]
    labels = dict(pair.split("=") for pair in FLEET_SELECTOR.split(","))
    assert labels == deployment["spec"]["selector"]["matchLabels"]
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    ]
    assert {"name": "fleet-sync", "containerPort": 9005, "protocol": "TCP"} in container["ports"]
    service_ports = [p["port"] for p in (s.get(CHILDREN["Service"]) or {})["spec"]["ports"]]
    assert 9005 not in service_ports, service_ports

    # kwok runs the two pods of the new template (and removes the old one); each gets a 127.1.x.y address, where
    # the test runs that pod's router, as the Deployment says, with the pod's downward-API environment.
    pods = eventually_sync(
        lambda: _router_pods(s, args), timeout=90, interval=0.05, message="two Ready router pods of the new template"
    )
    ips = [pod["status"]["podIP"] for pod in pods]
    assert all(ip.startswith("127.") for ip in ips), ips
    fleet_port = port_free_on_all(ips)
    token = s.cp.create_service_account_token(
        NS, deployment["spec"]["template"]["spec"]["serviceAccountName"], create=False
    )
    kubeconfig = write_kubeconfig(s.cp, s.workdir / "fleet.kubeconfig", token, NS)
    urls, routers = [], []
    for pod, ip in zip(pods, ips, strict=True):
        run = list(args)
        run[run.index("--host") + 1] = ip
        port = free_port(ip)
        name = pod["metadata"]["name"]
        router = s.processes.start(
            f"router-{name}",
            kvroute_command(
                *run, *("--kubeconfig", str(kubeconfig), "--port", str(port), "--fleet-port", str(fleet_port))
            ),
            env={"POD_NAME": name, "POD_IP": ip},
        )
        routers.append(router)
        urls.append(f"http://{ip}:{port}")
    s.values["fleet_routers"] = routers
    for router, url in zip(routers, urls, strict=True):
        eventually_sync(
            lambda r=router, u=url: (
                r.running
                and http("GET", f"{u}/readyz")[0] == 200
                and _metric(u, "kvroute_fleet_peer_addresses") == 1  # its peer's pod, not its own
                and _metric(u, "kvroute_fleet_peers") == 1
            ),
            timeout=60,
            interval=0.2,
            message=f"the router at {url} to be ready and hear its peer",
        )

    def complete(url: str, prompt: str) -> str | None:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
        status, headers, _ = http("POST", f"{url}/v1/completions", body, timeout=30)
        assert status == 200
        return headers.get("x-inference-pod")

    prompts = [f"fleet {i} " + "a question nobody asked before. " * 20 for i in range(6)]
    through_a = [complete(urls[0], prompt) for prompt in prompts]
    applied: list[float] = []

    def settled() -> bool:  # b applied a's records, nothing more arrives, no request of a's is open
        applied.append(_metric(urls[1], "kvroute_fleet_records_applied_total") or 0.0)
        stable = len(applied) > 5 and applied[-6] == applied[-1] >= 2 * len(prompts)
        return stable and _metric(urls[1], "kvroute_fleet_peer_requests_open") == 0

    eventually_sync(settled, timeout=60, interval=0.2, message="router b to apply router a's decisions")
    through_b = [complete(urls[1], prompt) for prompt in prompts]
    assert through_b == through_a, (through_a, through_b)
    assert set(through_a) <= set(PODS)

    # Router b goes away with its pod: a disconnects from it and, after the peer timeout, forgets it.
    routers[1].stop()
    gone = pods[1]["metadata"]["name"]
    ok(s.cp.api("DELETE", f"/api/v1/namespaces/{NS}/pods/{gone}", {"gracePeriodSeconds": 0}))
    a_log = f"router-{pods[0]['metadata']['name']}"
    eventually_sync(
        lambda: f"-{ips[1]}:{fleet_port}" in s.processes[a_log].output(),
        timeout=30,
        interval=0.2,
        message="router a to drop b's address",
    )
    eventually_sync(
        lambda: _metric(urls[0], "kvroute_fleet_peers") == 0, timeout=30, interval=0.5, message="router a to forget b"
    )
    assert routers[0].running
    s.note(
        f"2 replicas, `--fleet-peer-selector {FLEET_SELECTOR}`; pods {', '.join(ips)} found each other; "
        f"{len(prompts)} prompts via a then b -> same pods {sorted(map(str, set(through_a)))}; b deleted, a forgot it"
    )


def test_12_deleting_the_pool_collects_the_children(scenario: Scenario) -> None:
    s = scenario
    ok(s.cp.api("DELETE", f"{POOLS_PATH}/{POOL}"))
    started = time.monotonic()
    gone: dict[str, float] = {}

    def collected() -> bool:
        for kind, path in CHILDREN.items():
            if kind not in gone and s.get(path) is None:
                gone[kind] = time.monotonic() - started
        return len(gone) == len(CHILDREN)

    eventually_sync(collected, timeout=90, interval=0.25, message="the garbage collector to delete every child")
    condition = eventually_sync(
        lambda: (c := s.profile_condition("Accepted")) and c["reason"] == "PoolNotFound" and c,
        timeout=30,
        interval=0.2,
        message="the profile to report its pool missing",
    )
    assert condition["status"] == "False"
    assert s.values["operator"].running, s.processes["operator"].output()
    timings = ", ".join(f"{kind} {seconds:.1f}s" for kind, seconds in sorted(gone.items(), key=lambda kv: kv[1]))
    s.note(f"children gone after the delete: {timings}; profile Accepted=False PoolNotFound")
