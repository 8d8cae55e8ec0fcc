"""The router's identity and its least privilege, in the pool's namespace only: read pods, read its own
InferencePool and its own ConfigMap (by name), read InferenceObjectives. Nothing else, and nothing cluster-wide.

A `resourceNames` restriction also applies to list and watch when the request selects that one object
(`fieldSelector=metadata.name=<name>`), which is how the router lists and watches its pool and its ConfigMap.
InferenceObjectives cannot be narrowed that way: the router lists all of the namespace's and keeps those whose
`spec.poolRef` names its pool (no field selector reaches into a custom resource's spec).
"""

from __future__ import annotations

from typing import Any

from kvroute.operator.resources.meta import OBJECTIVE_GROUP, POOL_GROUP, Pool, object_meta

READ = ["get", "list", "watch"]


def service_account(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(pool, pool.router_name),
        "automountServiceAccountToken": True,
    }


def role(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(pool, pool.router_name),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
            {"apiGroups": [POOL_GROUP], "resources": ["inferencepools"], "resourceNames": [pool.name], "verbs": READ},
            {"apiGroups": [OBJECTIVE_GROUP], "resources": ["inferenceobjectives"], "verbs": READ},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [pool.config_map_name],
                "verbs": READ,
            },
        ],
    }


def role_binding(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(pool, pool.router_name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": pool.router_name},
        "subjects": [{"kind": "ServiceAccount", "name": pool.router_name, "namespace": pool.namespace}],
    }
