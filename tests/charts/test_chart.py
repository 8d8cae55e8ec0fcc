"""The Helm chart (charts/kvroute): lint, render, validate every object against the Kubernetes 1.35 schemas, and
pin what matters to a cluster admin: the operator's security context, its RBAC, and the CRDs it installs.

helm comes from scripts/k8s-tools.sh (pinned, cached outside the repository). Without it the tests skip locally
and fail in CI.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kvroute"
KUBE_VERSION = "1.35.0"
NAMESPACE = "kvroute-system"
RELEASE = "kvr"
INFERENCE_GROUP = "inference.networking.k8s.io"
OBJECTIVE_GROUP = "inference.networking.x-k8s.io"
UPSTREAM_GROUPS = (INFERENCE_GROUP, OBJECTIVE_GROUP)  # the optional CRDs, installed from files/crds/

Manifest = dict[str, Any]

NAMESPACED = ("--set", "watch.allNamespaces=false", "--set", "watch.namespaces={team-a,team-b}")
PEERING = ("--set", "peering.enabled=true", "--set", "operator.replicas=2")
VALUE_SETS = {
    "defaults": (),
    "no-crd-no-metrics": (
        *("--set", "installInferencePoolCRD=false", "--set", "installInferenceObjectiveCRD=false"),
        *("--set", "metrics.enabled=false"),
    ),
    "objective-crd-only": ("--set", "installInferencePoolCRD=false"),
    "namespaced-peering": (*NAMESPACED, *PEERING),
    "clusterwide-peering": PEERING,
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Helm:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    def template(self, *args: str) -> list[Manifest]:
        proc = self.run("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION, *args)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "k8s-tools.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        message = f"helm is not available: scripts/k8s-tools.sh exited {proc.returncode}\n{proc.stderr}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(Path(proc.stdout.strip()) / "helm", env)


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[Manifest]]:
    return {name: helm.template(*args) for name, args in VALUE_SETS.items()}


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} objects rendered"
    return found[0]


def operator_container(manifests: list[Manifest]) -> Manifest:
    containers = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: Manifest = containers[0]
    return container


def operator_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def upstream_crds(manifests: list[Manifest]) -> dict[str, Manifest]:
    """The optional upstream CRDs rendered, by kind."""
    return {
        m["spec"]["names"]["kind"]: m
        for m in manifests
        if m["kind"] == "CustomResourceDefinition" and m["spec"]["group"] in UPSTREAM_GROUPS
    }


def test_tools_are_helm_4_and_kubectl_1_35(helm: Helm) -> None:
    kubectl = helm.binary.parent / "kubectl"
    client = subprocess.run([str(kubectl), "version", "--client"], capture_output=True, text=True, check=True)

    assert helm.run("version", "--template", "{{.Version}}").stdout.startswith("v4.")
    assert "Client Version: v1.35." in client.stdout


# --- lint and render --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_chart_lints_strictly(helm: Helm, values: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VALUE_SETS[values])

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_default_render_is_the_operator_and_its_rbac(rendered: dict[str, list[Manifest]]) -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in rendered["defaults"])

    assert kinds == [
        ("ClusterRole", "kvr-kvroute-operator"),
        ("ClusterRole", "kvr-kvroute-operator-cluster"),
        ("ClusterRoleBinding", "kvr-kvroute-operator"),
        ("ClusterRoleBinding", "kvr-kvroute-operator-cluster"),
        ("CustomResourceDefinition", f"inferenceobjectives.{OBJECTIVE_GROUP}"),
        ("CustomResourceDefinition", f"inferencepools.{INFERENCE_GROUP}"),
        ("Deployment", "kvr-kvroute-operator"),
        ("Service", "kvr-kvroute-operator-metrics"),
        ("ServiceAccount", "kvr-kvroute-operator"),
    ]


@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_every_rendered_object_validates_against_kubernetes_1_35(
    rendered: dict[str, list[Manifest]], values: str
) -> None:
    for manifest in rendered[values]:
        if manifest["apiVersion"] == "kopf.dev/v1":  # a custom resource: no schema here, checked below
            continue
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_validation_is_strict_enough_to_catch_a_misplaced_field() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"port": 80}}

    with pytest.raises(kubernetes_validate.ValidationError, match="'port' was unexpected"):
        kubernetes_validate.validate(service, KUBE_VERSION, strict=True)


def test_every_object_of_the_release_is_labelled_and_namespaced(rendered: dict[str, list[Manifest]]) -> None:
    for manifest in rendered["namespaced-peering"]:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "kvroute"
        if manifest["kind"] in ("Deployment", "ServiceAccount", "Service"):
            assert manifest["metadata"]["namespace"] == NAMESPACE


# --- the operator Deployment ------------------------------------------------------------------------------------


def test_operator_pod_is_locked_down(rendered: dict[str, list[Manifest]]) -> None:
    pod = only(rendered["defaults"], "Deployment")["spec"]["template"]["spec"]
    container = operator_container(rendered["defaults"])

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == "kvr-kvroute-operator"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_operator_is_probed_on_its_health_endpoint(rendered: dict[str, list[Manifest]]) -> None:
    container = operator_container(rendered["defaults"])

    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator_env(container)["KVROUTE_OPERATOR_HEALTH_PORT"] == "8081"


def test_operator_arguments_follow_the_watch_values(rendered: dict[str, list[Manifest]]) -> None:
    assert operator_container(rendered["defaults"])["args"] == [
        "--all-namespaces",
        "--router-image=kvroute/router:0.1.0",
    ]
    assert operator_container(rendered["namespaced-peering"])["args"] == [
        "--namespace=team-a",
        "--namespace=team-b",
        "--router-image=kvroute/router:0.1.0",
    ]


def test_images_default_to_the_app_version_and_can_be_pinned_by_digest(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    values = (f"operator.image.digest={digest}", "router.image.tag=9.9.9", "operator.logLevel=debug")
    manifests = helm.template(*(arg for value in values for arg in ("--set", value)))
    container = operator_container(manifests)

    assert container["image"] == f"kvroute/operator@{digest}"
    assert "--router-image=kvroute/router:9.9.9" in container["args"]
    assert operator_env(container)["KVROUTE_OPERATOR_LOG_LEVEL"] == "debug"


def test_a_single_operator_is_replaced_not_rolled(rendered: dict[str, list[Manifest]]) -> None:
    # Without peering, a rolling update would briefly run two operators reconciling the same pools.
    assert only(rendered["defaults"], "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert operator_env(operator_container(rendered["defaults"]))["KVROUTE_OPERATOR_STANDALONE"] == "true"
    peered = only(rendered["clusterwide-peering"], "Deployment")["spec"]
    assert peered["replicas"] == 2
    assert peered["strategy"] == {"type": "RollingUpdate"}
    env = operator_env(operator_container(rendered["clusterwide-peering"]))
    assert env["KVROUTE_OPERATOR_STANDALONE"] == "false"
    assert env["KVROUTE_OPERATOR_PEERING"] == "kvroute"


def test_two_replicas_without_peering_are_refused(helm: Helm) -> None:
    proc = helm.run("template", RELEASE, str(CHART), "--set", "operator.replicas=2")

    assert proc.returncode != 0
    assert "operator.replicas > 1 requires peering.enabled" in proc.stderr


def test_namespaced_mode_needs_namespaces(helm: Helm) -> None:
    proc = helm.run("template", RELEASE, str(CHART), "--set", "watch.allNamespaces=false")

    assert proc.returncode != 0
    assert "watch.namespaces must list at least one namespace" in proc.stderr


def test_values_schema_rejects_a_misspelt_key(helm: Helm) -> None:
    proc = helm.run("template", RELEASE, str(CHART), "--set", "operator.replica=2")

    assert proc.returncode != 0
    assert "'replica' not allowed" in proc.stderr


def test_metrics_service_selects_the_operator(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["defaults"]
    service = only(manifests, "Service")
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    container = operator_container(manifests)

    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert operator_env(container)["KVROUTE_OPERATOR_METRICS_PORT"] == "9090"


def test_disabled_metrics_are_not_served(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["no-crd-no-metrics"]
    container = operator_container(manifests)

    assert not [m for m in manifests if m["kind"] == "Service"]
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert operator_env(container)["KVROUTE_OPERATOR_METRICS_PORT"] == "0"


def test_peering_objects_match_the_scope(rendered: dict[str, list[Manifest]]) -> None:
    cluster = [m for m in rendered["clusterwide-peering"] if m["apiVersion"] == "kopf.dev/v1"]
    namespaced = [m for m in rendered["namespaced-peering"] if m["apiVersion"] == "kopf.dev/v1"]

    assert [(m["kind"], m["metadata"]["name"]) for m in cluster] == [("ClusterKopfPeering", "kvroute")]
    assert [(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in namespaced] == [
        ("KopfPeering", "team-a", "kvroute"),
        ("KopfPeering", "team-b", "kvroute"),
    ]
    assert not [m for m in rendered["defaults"] if m["apiVersion"] == "kopf.dev/v1"]


# --- RBAC -------------------------------------------------------------------------------------------------------

READ = ("get", "list", "watch")
MANAGE = ("get", "list", "watch", "create", "update", "patch", "delete")

# Everything the operator may do in a watched namespace; templates/rbac.yaml says why for each line.
NAMESPACED_RULES = {
    (INFERENCE_GROUP, "inferencepools"): {*READ, "patch"},
    (OBJECTIVE_GROUP, "inferenceobjectives"): set(READ),
    ("kvroute.io", "schedulingprofiles"): {*READ, "patch"},
    ("kvroute.io", "schedulingprofiles/status"): {"get", "patch"},
    ("", "configmaps"): set(MANAGE),
    ("", "services"): set(MANAGE),
    ("", "serviceaccounts"): set(MANAGE),
    ("apps", "deployments"): set(MANAGE),
    ("rbac.authorization.k8s.io", "roles"): set(MANAGE),
    ("rbac.authorization.k8s.io", "rolebindings"): set(MANAGE),
    ("", "pods"): set(READ),
    ("", "events"): {"create"},
}
CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): set(READ),
    ("", "namespaces"): set(READ),
}


def permissions(role: Manifest, *, exact: bool = True) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs. `exact`: no rule may narrow itself with resourceNames."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        assert not exact or "resourceNames" not in rule, "the chart's rules never name single objects"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def roles(manifests: list[Manifest]) -> Iterator[Manifest]:
    return (m for m in manifests if m["kind"] in ("ClusterRole", "Role"))


@pytest.mark.parametrize("values", VALUE_SETS.keys())
def test_rbac_has_no_wildcards_and_no_secrets(rendered: dict[str, list[Manifest]], values: str) -> None:
    for role in roles(rendered[values]):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_operator_permissions_are_exactly_what_it_needs(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["defaults"]

    assert permissions(only(manifests, "ClusterRole", "kvr-kvroute-operator")) == NAMESPACED_RULES
    assert permissions(only(manifests, "ClusterRole", "kvr-kvroute-operator-cluster")) == CLUSTER_RULES


def test_peering_adds_only_the_peering_objects(rendered: dict[str, list[Manifest]]) -> None:
    cluster = rendered["clusterwide-peering"]
    namespaced = rendered["namespaced-peering"]

    assert permissions(only(cluster, "ClusterRole", "kvr-kvroute-operator-cluster")) == {
        **CLUSTER_RULES,
        ("kopf.dev", "clusterkopfpeerings"): {*READ, "patch"},
    }
    assert permissions(only(namespaced, "ClusterRole", "kvr-kvroute-operator")) == {
        **NAMESPACED_RULES,
        ("kopf.dev", "kopfpeerings"): {*READ, "patch"},
    }


def test_operator_holds_every_permission_it_grants_routers(rendered: dict[str, list[Manifest]]) -> None:
    # Kubernetes lets the operator create a router's Role only if it holds every permission in it.
    from kvroute.operator.resources.meta import Pool
    from kvroute.operator.resources.rbac import role

    pool = Pool.from_object({"metadata": {"namespace": "team-a", "name": "llama", "uid": "u1"}, "spec": {}})
    router_role = permissions(role(pool), exact=False)
    held = permissions(only(rendered["defaults"], "ClusterRole", "kvr-kvroute-operator"))

    assert router_role.keys() == {
        ("", "pods"),
        (INFERENCE_GROUP, "inferencepools"),
        (OBJECTIVE_GROUP, "inferenceobjectives"),
        ("", "configmaps"),
    }
    for key, verbs in router_role.items():
        assert verbs <= held.get(key, set()), f"the operator cannot grant {sorted(verbs)} on {key}"


def test_namespaced_mode_binds_only_the_watched_namespaces(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["namespaced-peering"]
    subject = {"kind": "ServiceAccount", "name": "kvr-kvroute-operator", "namespace": NAMESPACE}

    bindings = [m for m in manifests if m["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["name"] == "kvr-kvroute-operator"
        assert binding["subjects"] == [subject]
    cluster_bindings = [m for m in manifests if m["kind"] == "ClusterRoleBinding"]
    assert [b["roleRef"]["name"] for b in cluster_bindings] == ["kvr-kvroute-operator-cluster"]
    assert cluster_bindings[0]["subjects"] == [subject]


def test_service_account_token_is_mounted_only_into_the_operator(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["defaults"]

    assert only(manifests, "ServiceAccount")["automountServiceAccountToken"] is False
    assert only(manifests, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


# --- CRDs -------------------------------------------------------------------------------------------------------


def repo_crds() -> list[Path]:
    files = sorted((REPO / "crds").glob("*.yaml"))
    assert files, "crds/ holds no CRD (the source of truth the chart copies)"
    return files


def crd_group(path: Path) -> str:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(docs) == 1, f"{path.name}: one CRD per file expected"
    assert docs[0]["kind"] == "CustomResourceDefinition"
    group: str = docs[0]["spec"]["group"]
    return group


def test_chart_crds_are_byte_identical_copies_of_the_repository_crds() -> None:
    expected: dict[Path, bytes] = {}
    for path in repo_crds():
        folder = CHART / "files" / "crds" if crd_group(path) in UPSTREAM_GROUPS else CHART / "crds"
        expected[folder / path.name] = path.read_bytes()
    copies = {path: path.read_bytes() for path in [*CHART.glob("crds/*"), *CHART.glob("files/crds/*")]}

    assert sorted(copies) == sorted(expected), "run scripts/sync-chart-crds.sh"
    for path, content in expected.items():
        assert copies[path] == content, f"{path.relative_to(REPO)} differs from crds/: run scripts/sync-chart-crds.sh"


def test_repository_has_every_crd() -> None:
    groups = sorted(crd_group(path) for path in repo_crds())

    assert groups == sorted([INFERENCE_GROUP, OBJECTIVE_GROUP, "kvroute.io"])


def test_upstream_crds_follow_their_flags(rendered: dict[str, list[Manifest]]) -> None:
    assert upstream_crds(rendered["defaults"]).keys() == {"InferencePool", "InferenceObjective"}
    assert upstream_crds(rendered["objective-crd-only"]).keys() == {"InferenceObjective"}
    assert upstream_crds(rendered["no-crd-no-metrics"]) == {}


@pytest.mark.parametrize("kind", ["InferencePool", "InferenceObjective"])
def test_upstream_crds_are_the_repository_files_and_survive_uninstall(
    rendered: dict[str, list[Manifest]], kind: str
) -> None:
    crd = upstream_crds(rendered["defaults"])[kind]
    (source,) = [p for p in repo_crds() if yaml.safe_load(p.read_text())["spec"]["names"]["kind"] == kind]

    assert crd["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep"
    assert crd["metadata"]["labels"].pop("app.kubernetes.io/instance") == RELEASE
    original = yaml.safe_load(source.read_text())
    for field in ("annotations", "labels"):
        added = crd["metadata"].pop(field)
        assert original["metadata"].pop(field, {}).items() <= added.items()
    assert crd == original


def test_crds_directory_installs_the_kvroute_crds_whatever_the_flag(helm: Helm) -> None:
    for args in ((), VALUE_SETS["no-crd-no-metrics"]):
        crds = [m for m in helm.template("--include-crds", *args) if m["kind"] == "CustomResourceDefinition"]
        kvroute_crds = [c for c in crds if c["spec"]["group"] not in UPSTREAM_GROUPS]

        assert {c["spec"]["names"]["kind"] for c in kvroute_crds} >= {"SchedulingProfile"}
        for crd in crds:
            kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
