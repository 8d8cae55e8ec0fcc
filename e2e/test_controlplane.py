"""The e2e control plane behaves like a real cluster: it serves the pinned version, enforces RBAC, runs
Deployments to Running pods on the kwok node with loopback pod IPs, and garbage-collects dependents."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support import eventually_sync

from .controlplane.binaries import pinned_versions
from .controlplane.cluster import NODE_NAME, POD_CIDR, ControlPlane

pytestmark = pytest.mark.e2e

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_namespaces = (f"cp-e2e-{i}" for i in itertools.count())


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An admin client configured from the kubeconfig the control plane wrote."""
    with config.new_client_from_config(config_file=str(control_plane.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = next(_namespaces)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually_sync(
        lambda: _exists(core.read_namespaced_service_account, name),
        timeout=60,
        interval=0.25,
        message=f"the default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name)


def token_client(control_plane: ControlPlane, token: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = control_plane.api_url
    configuration.ssl_ca_cert = str(control_plane.ca_file)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def _exists(read: Callable[[str, str], object], namespace: str, name: str = "default") -> bool:
    try:
        read(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_api_server_serves_the_pinned_version_and_is_ready(control_plane: ControlPlane, api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    assert version.git_version == pinned_versions()["KUBERNETES_VERSION"]
    assert control_plane.api("GET", "/readyz") == (200, "ok")
    assert control_plane.api_url.startswith("https://127.0.0.1:")


def test_rbac_denies_a_service_account_until_a_role_grants_it(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    token = control_plane.create_service_account_token(namespace, "reader")
    with token_client(control_plane, token) as as_reader:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_reader).list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.value.body

        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-secrets"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="reader-reads-secrets"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )
        secrets = eventually_sync(
            lambda: _list_or_none(as_reader, namespace),
            timeout=60,
            interval=0.25,
            message="the RoleBinding to take effect",
        )
        assert secrets.items == []
        # The grant is exactly what the Role says: other namespaces stay forbidden.
        with pytest.raises(ApiException) as elsewhere:
            client.CoreV1Api(as_reader).list_namespaced_secret("kube-system")
        assert elsewhere.value.status == 403


def _list_or_none(api: client.ApiClient, namespace: str) -> client.V1SecretList | None:
    try:
        return client.CoreV1Api(api).list_namespaced_secret(namespace)
    except ApiException as error:
        if error.status == 403:
            return None
        raise


def test_controller_manager_fills_service_account_token_secrets(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bot")))
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="bot-token", annotations={"kubernetes.io/service-account.name": "bot"}),
            type="kubernetes.io/service-account-token",
        ),
    )
    secret = eventually_sync(
        lambda: (s := core.read_namespaced_secret("bot-token", namespace)).data and "token" in s.data and s,
        timeout=60,
        interval=0.25,
        message="the token controller to fill the Secret",
    )
    token = base64.b64decode(secret.data["token"]).decode()
    with token_client(control_plane, token) as as_bot:
        review = client.AuthenticationV1Api(as_bot).create_self_subject_review(client.V1SelfSubjectReview())
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:bot"


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                # kwok never pulls or runs the image.
                spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="kvroute.invalid/none:0")]),
            ),
        ),
    )


def _running_pods(core: client.CoreV1Api, namespace: str, selector: str, count: int) -> list[client.V1Pod] | None:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
    return running if len(running) == count else None


def test_deployment_pods_run_on_the_kwok_node_with_loopback_ips(api: client.ApiClient, namespace: str) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    core = client.CoreV1Api(api)

    pods = eventually_sync(
        lambda: _running_pods(core, namespace, "app=web", 3), timeout=60, interval=0.25, message="3 Running pods"
    )

    pod_cidr = ipaddress.ip_network(POD_CIDR)
    for pod in pods:
        assert pod.spec.node_name == NODE_NAME
        assert ipaddress.ip_address(pod.status.pod_ip) in pod_cidr
        assert ipaddress.ip_address(pod.status.host_ip).is_loopback
        (owner,) = pod.metadata.owner_references
        assert owner.kind == "ReplicaSet"
        assert owner.controller
    # Not asserted: that the three addresses differ. kwok's pod-IP pool recycles the addresses of deleted pods and
    # was seen handing one out twice while another test's pods were going away; nothing here relies on it.
    (replica_set,) = client.AppsV1Api(api).list_namespaced_replica_set(namespace).items
    assert replica_set.metadata.owner_references[0].kind == "Deployment"
    assert replica_set.metadata.owner_references[0].name == "web"


def test_kwok_renews_the_node_lease_so_the_node_stays_ready(api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    first = leases.read_namespaced_lease(NODE_NAME, "kube-node-lease").spec.renew_time
    renewed = eventually_sync(
        lambda: (t := leases.read_namespaced_lease(NODE_NAME, "kube-node-lease").spec.renew_time) > first and t,
        timeout=30,
        interval=0.25,
        message="the node lease to be renewed",
    )
    assert renewed > first
    node = client.CoreV1Api(api).read_node(NODE_NAME)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert not node.spec.taints


def test_components_use_only_loopback_addresses(control_plane: ControlPlane, api: client.ApiClient) -> None:
    sockets = _inet_sockets()
    for name, pid in control_plane.pids().items():
        used = [sockets[inode] for inode in _socket_inodes(pid) if inode in sockets]
        assert used, f"{name} has no TCP/UDP sockets"
        for local, remote in used:
            assert local.is_loopback, f"{name} uses local address {local}"
            assert remote.is_loopback or remote.is_unspecified, f"{name} talks to {remote}"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def _inet_sockets() -> dict[str, tuple[IPAddress, IPAddress]]:
    """Local and remote address of every TCP and UDP socket on the machine, by inode."""
    table = {}
    for kind in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = (_proc_net_ip(fields[1]), _proc_net_ip(fields[2]))
    return table


def _proc_net_ip(address: str) -> IPAddress:
    """Decodes ``0100007F:1F90``: /proc/net writes each 32-bit word of the address in host (little-endian) order."""
    raw = bytes.fromhex(address.partition(":")[0])
    ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def test_deleting_an_owner_garbage_collects_its_dependents(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = apps.create_namespaced_deployment(namespace, _deployment("doomed", replicas=2))
    eventually_sync(
        lambda: _running_pods(core, namespace, "app=doomed", 2), timeout=60, interval=0.25, message="2 Running pods"
    )
    owned = client.V1OwnerReference(
        api_version="apps/v1", kind="Deployment", name="doomed", uid=deployment.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="doomed-config", owner_references=[owned]))
    )

    apps.delete_namespaced_deployment("doomed", namespace, propagation_policy="Background")

    eventually_sync(
        lambda: not apps.list_namespaced_replica_set(namespace).items,
        timeout=60,
        interval=0.25,
        message="the ReplicaSet to be collected",
    )
    eventually_sync(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=60,
        interval=0.25,
        message="the pods to be collected",
    )
    eventually_sync(
        lambda: not _exists(core.read_namespaced_config_map, namespace, "doomed-config"),
        timeout=60,
        interval=0.25,
        message="the owned ConfigMap to be collected",
    )
