"""GitOps against the real control plane: what a GitOps tool (Argo CD, Flux) does with the chart and with the
objects the operator owns.

1. The chart, rendered by `helm template --include-crds` with the values a user would keep in Git, is applied
   server-side twice under one field manager (as Argo CD and Flux's kustomize-controller do): the second apply
   changes no object (same resourceVersion and generation), `kubectl diff --server-side` prints nothing, and every
   rendered manifest is contained in its live object as written, so even a tool that diffs on the client sees no
   drift.
2. The operator, run as the chart's Deployment says (its arguments, its environment, its ServiceAccount), serves a
   pool and a profile applied the same way. After a resync (the operator restarted, then an event on the router
   Deployment) the children are untouched: same resourceVersions, the Deployment's spec, generation and the
   operator's managedFields entry unchanged, and the API server counted no apply at all (a no-op apply would not
   move a resourceVersion, so only the count shows a needless write). The operator's own rendering of the
   children diffs empty against the live objects, and the user's pool and profile still diff empty against Git:
   the operator never writes them.

The steps run in file order and share module-scoped state; once a step fails the later ones are skipped. Every
process is stopped by PID; every address is in 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from kvroute.operator.context import OperatorContext
from kvroute.operator.reconcile import children, contains, plan
from kvroute.operator.resources.meta import Pool
from kvroute.operator.settings import FIELD_MANAGER as OPERATOR_MANAGER
from kvroute.operator.settings import OperatorSettings
from kvroute.router.plugins.registry import REGISTRY
from tests.support import Processes, ServerProcess, eventually_sync, kvroute_command

from .controlplane.cluster import ControlPlane
from .helpers import REPO, in_ci, k8s_tools_dir, ok, scheduling_profile, step_log, write_kubeconfig

pytestmark = pytest.mark.e2e

T = TypeVar("T")

RELEASE, SYSTEM_NS, APPS_NS = "gitops", "gitops-system", "gitops-apps"
GITOPS_MANAGER = "kvroute-gitops-e2e"  # the GitOps tool's field manager (Argo CD: argocd-controller)
OPERATOR = f"{RELEASE}-kvroute-operator"  # the chart's Deployment and ServiceAccount for this release
CHART = REPO / "charts" / "kvroute"
POOL, PROFILE = "llm", "llm"
# The values a user keeps in Git: scoped to one namespace, pinned images, and the knobs a platform team sets.
# Quantities are written as the API server stores them (see docs/kubernetes.md, GitOps).
VALUES: dict[str, Any] = {
    "operator": {
        "image": {"tag": "0.1.0"},
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "384Mi"}},
        "podAnnotations": {"example.com/team": "ml-platform"},
        "podLabels": {"example.com/cost-center": "42"},  # a number as a string: must stay a string
        "extraArgs": ["--log-level=info"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "router": {"image": {"repository": "registry.example/kvroute/router", "tag": "0.1.0"}},
    "watch": {"allNamespaces": False, "namespaces": [APPS_NS]},
    "serviceAccount": {"annotations": {"iam.example.com/role": "kvroute-operator"}},
    "metrics": {"service": {"annotations": {"example.com/scrape-tier": "gold"}}},
    "tolerations": [
        {"key": "example.com/dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
    ],
}
# The profile's resources as a user might spell them; the API server stores 1, 512Mi, 2 and 1Gi.
ROUTER_RESOURCES = {"requests": {"cpu": "1000m", "memory": "0.5Gi"}, "limits": {"cpu": 2, "memory": "1024Mi"}}
CHILD_RESOURCES = ("configmaps", "serviceaccounts", "roles", "rolebindings", "deployments", "services")
CHILDREN = {
    "ConfigMap": f"/api/v1/namespaces/{APPS_NS}/configmaps/{POOL}-kvroute-config",
    "ServiceAccount": f"/api/v1/namespaces/{APPS_NS}/serviceaccounts/{POOL}-kvroute",
    "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{APPS_NS}/roles/{POOL}-kvroute",
    "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{APPS_NS}/rolebindings/{POOL}-kvroute",
    "Deployment": f"/apis/apps/v1/namespaces/{APPS_NS}/deployments/{POOL}-kvroute",
    "Service": f"/api/v1/namespaces/{APPS_NS}/services/{POOL}-epp",
}
POOL_PATH = f"/apis/inference.networking.k8s.io/v1/namespaces/{APPS_NS}/inferencepools/{POOL}"
PROFILE_PATH = f"/apis/kvroute.io/v1alpha1/namespaces/{APPS_NS}/schedulingprofiles/{PROFILE}"
TOUCH = "e2e.kvroute.io/touch"


@dataclass
class Scenario:
    cp: ControlPlane
    tools: Path
    workdir: Path
    processes: Processes
    failed: str | None = None
    notes: list[str] = field(default_factory=list)
    rendered: list[dict[str, Any]] = field(default_factory=list)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.tools / "kubectl"), "--kubeconfig", str(self.cp.kubeconfig), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def apply(self, documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        """A GitOps sync: server-side apply under the tool's field manager, taking over conflicting fields."""
        return self.kubectl(
            *("apply", "--server-side", "--force-conflicts", f"--field-manager={GITOPS_MANAGER}", "-f", "-"),
            stdin=yaml.safe_dump_all(documents),
        )

    def diff(self, documents: list[dict[str, Any]], manager: str = GITOPS_MANAGER) -> subprocess.CompletedProcess[str]:
        """`kubectl diff --server-side`: exit code 0 and no output when the live objects already match."""
        return self.kubectl(
            *("diff", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-f", "-"),
            stdin=yaml.safe_dump_all(documents),
            check=False,
        )

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.cp.api("GET", path)
        if status == 404:
            return None
        assert status == 200, f"GET {path}: {status} {body}"
        return dict(body)

    def live(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = json.loads(self.kubectl("get", "-o", "json", "-f", "-", stdin=yaml.safe_dump_all(documents)).stdout)
        return list(items.get("items") or [items])

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
    state = Scenario(control_plane, tools, tmp_path_factory.mktemp("gitops"), Processes(show_output=True))
    for namespace in (SYSTEM_NS, APPS_NS):
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        ok(control_plane.api("POST", "/api/v1/namespaces", body), 201, 409)
    try:
        yield state
    finally:
        _tear_down(state)


def _tear_down(s: Scenario) -> None:
    """The pool first, while the operator runs (it removes its finalizer from the router Deployment as the
    garbage collector deletes it), then the processes, the namespaces and the release's cluster-scoped objects.
    The CRDs stay: other modules of the session use them."""
    s.cp.api("DELETE", POOL_PATH)
    with contextlib.suppress(AssertionError):  # best effort: the namespace is deleted below in any case
        eventually_sync(lambda: s.get(CHILDREN["Deployment"]) is None, timeout=30, interval=0.2)
    s.processes.stop_all()
    for namespace in (APPS_NS, SYSTEM_NS):
        s.cp.api("DELETE", f"/api/v1/namespaces/{namespace}")
    cluster_scoped = [
        d for d in s.rendered if "namespace" not in d["metadata"] and d["kind"] != "CustomResourceDefinition"
    ]
    if cluster_scoped:
        s.kubectl("delete", "--ignore-not-found", "-f", "-", stdin=yaml.safe_dump_all(cluster_scoped), check=False)


@pytest.fixture(autouse=True)
def step(scenario: Scenario, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Skips a step after a failed one; prints the step's line of the log."""
    yield from step_log(scenario, request.node.name, "gitops-e2e", 48, capsys)


def settled(read: Callable[[], T], *, hold: float = 1.5, timeout: float = 60.0, message: str) -> T:
    """`read()` once it has returned the same value for `hold` seconds (a rollout or a reconcile has finished)."""
    seen: list[tuple[float, T]] = []

    def still() -> tuple[T] | None:  # a tuple: truthy even when the value is not
        value = read()
        if not seen or seen[-1][1] != value:
            seen.append((time.monotonic(), value))
        return (value,) if time.monotonic() - seen[-1][0] >= hold else None

    found = eventually_sync(still, timeout=timeout, interval=0.25, message=message)
    assert found is not None
    return found[0]


def applies(s: Scenario) -> int:
    """Server-side applies the API server has served (dry runs left out) on the kinds of a pool's children."""
    status, text = s.cp.api("GET", "/metrics")
    assert status == 200 and isinstance(text, str), status
    total = 0
    for labels, value in re.findall(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("verb") == "APPLY" and found.get("dry_run") == "" and found.get("resource") in CHILD_RESOURCES:
            total += int(float(value))
    return total


def _versions(objects: list[dict[str, Any]]) -> dict[str, tuple[str, int | None]]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": (o["metadata"]["resourceVersion"], o["metadata"].get("generation"))
        for o in objects
    }


def test_01_the_chart_applied_twice_server_side_is_a_no_op(scenario: Scenario) -> None:
    s = scenario
    values = s.workdir / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    helm = subprocess.run(
        [str(s.tools / "helm"), "template", RELEASE, str(CHART), "-n", SYSTEM_NS, "--include-crds", "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    s.rendered = [doc for doc in yaml.safe_load_all(helm.stdout) if doc]
    kinds = sorted(doc["kind"] for doc in s.rendered)
    assert kinds.count("CustomResourceDefinition") == 3 and "Deployment" in kinds, kinds
    assert {"RoleBinding", "ClusterRole", "ServiceAccount", "Service"} <= set(kinds), kinds

    s.apply(s.rendered)
    for crd in (d["metadata"]["name"] for d in s.rendered if d["kind"] == "CustomResourceDefinition"):
        s.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd}")
    # The operator's Deployment rolls out (kwok runs its pod); once it is done, nothing changes by itself.
    before = settled(lambda: _versions(s.live(s.rendered)), message="the release's objects to settle")

    second = s.apply(s.rendered)
    after = _versions(s.live(s.rendered))
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert second.stdout.count("serverside-applied") == len(s.rendered), second.stdout

    diff = s.diff(s.rendered)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    # Every field the chart renders is stored exactly as rendered: no defaulted value, quantity or number that the
    # server rewrites, so a client-side diff (Argo CD without server-side diff) sees no drift either.
    live = {(o["kind"], o["metadata"]["name"]): o for o in s.live(s.rendered)}
    rewritten = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in s.rendered
        if not contains(live[(d["kind"], d["metadata"]["name"])], d)
    ]
    assert not rewritten, rewritten
    s.note(f"{len(s.rendered)} objects ({', '.join(sorted(set(kinds)))}); 2nd apply: 0 changed; diff empty")


def _chart_operator(s: Scenario) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment of the operator container the chart renders."""
    deployment = next(d for d in s.rendered if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return list(container["args"]), {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def _start_operator(s: Scenario) -> ServerProcess:
    """`kvroute operator run` (the image's entrypoint) as the chart's Deployment runs it, logged in as the chart's
    ServiceAccount; the health and metrics listeners (0.0.0.0 in a pod) are left off."""
    args, env = _chart_operator(s)
    env |= {"KVROUTE_OPERATOR_HEALTH_PORT": "0", "KVROUTE_OPERATOR_METRICS_PORT": "0"}
    token = s.cp.create_service_account_token(SYSTEM_NS, OPERATOR, create=False)
    kubeconfig = write_kubeconfig(s.cp, s.workdir / "operator.kubeconfig", token, SYSTEM_NS)
    argv = kvroute_command("operator", "run", *args, "--kubeconfig", str(kubeconfig))
    return s.processes.start("operator", argv, env=env)


def _user_manifests() -> list[dict[str, Any]]:
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": APPS_NS},
        "spec": {
            "selector": {"matchLabels": {"app": POOL}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": 9002}},
        },
    }
    profile = scheduling_profile(PROFILE, APPS_NS, POOL, router={"replicas": 2, "resources": ROUTER_RESOURCES})
    return [pool, profile]


def _children_state(s: Scenario) -> dict[str, Any]:
    """What a resync must leave alone: each child's resourceVersion; for the Deployment, whose resourceVersion also
    moves with its rollout status and kopf's bookkeeping, its generation, spec, labels, kvroute's annotations and
    the operator's managedFields entry (its time moves with every apply that changes something)."""
    state: dict[str, Any] = {}
    for kind, path in CHILDREN.items():
        meta = (s.get(path) or {}).get("metadata") or {}
        if kind != "Deployment":
            state[kind] = meta.get("resourceVersion")
            continue
        deployment = s.get(path) or {}
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != TOUCH}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("kvroute.io/")}
        applied = [f for f in meta.get("managedFields") or [] if f["manager"] == OPERATOR_MANAGER]
        state[kind] = json.dumps(
            [meta.get("generation"), deployment.get("spec"), labels, annotations, applied], sort_keys=True
        )
    return state


def _condition(s: Scenario, kind: str) -> bool:
    conditions = ((s.get(PROFILE_PATH) or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def test_02_the_operators_children_do_not_drift_across_a_resync(scenario: Scenario) -> None:
    s = scenario
    operator = _start_operator(s)
    user = _user_manifests()
    s.apply(user)
    user_applied = {kind: s.get(path) or {} for kind, path in (("pool", POOL_PATH), ("profile", PROFILE_PATH))}
    for kind in ("Accepted", "Ready"):  # kwok runs the two router pods, so the Deployment becomes available
        eventually_sync(partial(_condition, s, kind), timeout=90, interval=0.2, message=f"the profile to be {kind}")
    before = settled(lambda: _children_state(s), message="the children to settle")
    writes_before = applies(s)

    first_pid = operator.pid
    operator.stop()
    restarted = _start_operator(s)
    eventually_sync(
        lambda: "Handler 'inferencepool_event' succeeded" in restarted.output(),
        timeout=60,
        interval=0.1,
        message="the restarted operator to reconcile the pool",
    )
    deployment_events = restarted.output().count("Handler 'router_deployment_event' succeeded")
    # A label (an annotation would bump the Deployment's generation: annotations are copied to its ReplicaSets).
    s.kubectl("label", "-n", APPS_NS, "deployment", f"{POOL}-kvroute", f"{TOUCH}=1", "--overwrite")
    eventually_sync(
        lambda: restarted.output().count("Handler 'router_deployment_event' succeeded") > deployment_events,
        timeout=30,
        interval=0.1,
        message="the operator to reconcile the touched Deployment",
    )
    time.sleep(2.0)  # room for a late write to show
    after = _children_state(s)
    writes = applies(s) - writes_before
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert writes == 0, f"{writes} server-side applies on a resync that had nothing to change"

    # The operator's own rendering of the children is what is live: no diff under its field manager, and each
    # manifest is contained in its live object as written (the operator's test for "nothing to write").
    args, env = _chart_operator(s)
    image = next(a.partition("=")[2] for a in args if a.startswith("--router-image="))
    settings = OperatorSettings(router_image=image, router_image_pull_policy=env["KVROUTE_ROUTER_IMAGE_PULL_POLICY"])
    ctx = OperatorContext(settings, REGISTRY)
    pool = Pool.from_object(s.get(POOL_PATH) or {})
    desired = children(ctx, pool, plan(ctx, pool, s.get(PROFILE_PATH)))
    assert sorted(m["kind"] for m in desired) == sorted(CHILDREN)
    diff = s.diff(desired, manager=OPERATOR_MANAGER)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    by_kind = {m["kind"]: m for m in desired}
    assert all(contains(s.get(path), by_kind[kind]) for kind, path in CHILDREN.items())
    container = json.loads(after["Deployment"])[1]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }

    # The user's objects are the user's: the operator never wrote them, so Git still matches the cluster.
    diff = s.diff(user)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    assert (s.get(POOL_PATH) or {})["metadata"]["resourceVersion"] == user_applied["pool"]["metadata"][
        "resourceVersion"
    ]
    profile_meta = (s.get(PROFILE_PATH) or {})["metadata"]
    assert profile_meta["generation"] == user_applied["profile"]["metadata"]["generation"]
    writers = {(f["manager"], f.get("subresource", "")) for f in profile_meta["managedFields"]}
    assert writers == {(GITOPS_MANAGER, ""), (OPERATOR_MANAGER, "status")}, writers
    s.note(
        f"operator pid {first_pid} -> {restarted.pid}, Deployment touched: {len(CHILDREN)} children unchanged, "
        f"0 applies; operator's rendering and the user's pool+profile diff empty"
    )
