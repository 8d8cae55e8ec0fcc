"""The operator image against the e2e control plane (etcd, kube-apiserver, controllers, kwok on 127.0.0.1): run as
the chart runs it, on the host's network, logged in with a mounted kubeconfig, it reconciles an InferencePool into
the router Deployment (and its other children). The cluster's behaviour in depth is e2e/test_operator_e2e.py's;
this checks that the image does it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.controlplane.cluster import ControlPlane

from tests.images.engine import Container, Image
from tests.support import eventually_sync

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
NS, POOL = "operator-image", "llm"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/{POOL}-kvroute"
KUBECONFIG = "/etc/kvroute/kubeconfig"


def ok(result: tuple[int, Any], *expected: int) -> Any:
    status, body = result
    assert status in (expected or (200, 201)), f"HTTP {status}: {body}"
    return body


def install_crds(cluster: ControlPlane) -> None:
    """The repository's CRDs (crds/, the chart's source of truth), established."""
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for crd in filter(None, yaml.safe_load_all(path.read_text())):
            ok(cluster.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd), 201, 409)
            names.append(crd["metadata"]["name"])

    def established() -> bool:
        for name in names:
            crd = ok(cluster.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"), 200)
            conditions = crd.get("status", {}).get("conditions", [])
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    eventually_sync(established, timeout=30, interval=0.1, message="the CRDs established")


def kubeconfig_for_the_container(cluster: ControlPlane, path: Path) -> Path:
    """A kubeconfig with the CA inline (the container sees no host path), readable by the image's user."""
    ca = base64.b64encode(cluster.ca_file.read_bytes()).decode()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "image",
        "contexts": [{"name": "image", "context": {"cluster": "image", "user": "image", "namespace": NS}}],
        "clusters": [{"name": "image", "cluster": {"server": cluster.api_url, "certificate-authority-data": ca}}],
        "users": [{"name": "image", "user": {"token": cluster.admin_token}}],
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o644)  # a throw-away admin token of a throw-away cluster; the container runs as uid 65532
    return path


def test_the_operator_image_reconciles_a_pool_into_the_router_deployment(
    control_plane: ControlPlane,
    run_container: Callable[..., Container],
    images: dict[str, Image],
    tmp_path: Path,
) -> None:
    cluster = control_plane
    install_crds(cluster)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    ok(cluster.api("POST", "/api/v1/namespaces", namespace), 201, 409)
    kubeconfig = kubeconfig_for_the_container(cluster, tmp_path / "kubeconfig")
    router_image = images["router"].tag
    operator = run_container(
        images["operator"],
        *("--kubeconfig", KUBECONFIG, "--namespace", NS, "--router-image", router_image, "--standalone"),
        # Both listeners bind 0.0.0.0 (no host flag), on the host's network: off, everything stays on loopback.
        *("--metrics-port", "0", "--health-port", "0", "--log-level", "info"),
        options=("--volume", f"{kubeconfig}:{KUBECONFIG}:ro"),
    )
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": 9002}},
        },
    }
    created = ok(cluster.api("POST", f"/apis/inference.networking.k8s.io/v1/namespaces/{NS}/inferencepools", pool))

    def deployment() -> dict[str, Any] | None:
        assert operator.running, f"the operator exited:\n{operator.logs()[-4000:]}"
        status, body = cluster.api("GET", DEPLOYMENT)
        return dict(body) if status == 200 else None

    try:
        rendered = eventually_sync(deployment, timeout=60, interval=0.2, message="the router Deployment")
    except AssertionError as error:
        raise AssertionError(f"{error}\nthe operator's output:\n{operator.logs()[-4000:]}") from None
    assert rendered is not None

    owners = [(r["kind"], r["name"], r["uid"]) for r in rendered["metadata"]["ownerReferences"]]
    assert owners == [("InferencePool", POOL, created["metadata"]["uid"])]
    pod = rendered["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == router_image
    assert container["command"] == ["kvroute"]
    assert container["args"][:2] == ["router", "--mode"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert operator.uids() == (65532, 65532)
