from __future__ import annotations

from kvroute.operator.resources.meta import Pool
from kvroute.operator.resources.rbac import role, role_binding, service_account

from ..conftest import NAMESPACE, pool_object


def test_role_grants_only_reads_of_pods_its_pool_objectives_and_its_config_map() -> None:
    pool = Pool.from_object(pool_object("llama"))
    r = role(pool)
    assert r["kind"] == "Role"  # namespaced: nothing cluster-wide
    assert r["metadata"]["name"] == "llama-kvroute"
    assert r["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["inference.networking.k8s.io"],
            "resources": ["inferencepools"],
            "resourceNames": ["llama"],
            "verbs": ["get", "list", "watch"],
        },
        # Every objective of the namespace: the router keeps those whose spec.poolRef names its pool.
        {
            "apiGroups": ["inference.networking.x-k8s.io"],
            "resources": ["inferenceobjectives"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["llama-kvroute-config"],
            "verbs": ["get", "list", "watch"],
        },
    ]


def test_binding_ties_the_role_to_the_router_service_account() -> None:
    pool = Pool.from_object(pool_object("llama"))
    sa = service_account(pool)
    rb = role_binding(pool)
    assert sa["metadata"]["name"] == "llama-kvroute"
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llama-kvroute"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "llama-kvroute", "namespace": NAMESPACE}]
    for obj in (sa, role(pool), rb):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == pool.uid
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kvroute-operator"
