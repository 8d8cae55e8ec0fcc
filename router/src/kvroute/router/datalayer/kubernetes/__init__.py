"""Kubernetes discovery (`kvroute router --discovery kubernetes`): endpoints from an InferencePool's pods.

`KubernetesDiscovery` (in `discovery`) watches, in the pool's namespace, the InferencePool
(`inference.networking.k8s.io/v1`) named by `--pool-name`, the Pods its selector matches, and optionally the
router's ConfigMap (`--config-configmap NAME`, document under the key `config.yaml`). Ready, non-terminating pods
with an IPv4 address become one endpoint per target port in the `EndpointPool`; ConfigMap edits are hot-reloaded.
The namespace's InferenceObjectives (`inference.networking.x-k8s.io/v1alpha2`) of the pool become request
priorities (`objectives.ObjectiveWatcher`, `KubernetesDiscovery.objectives`).

The router talks to the API server through kubernetes_asyncio (`api` for requests, `watch` for the list-and-watch
loop), authenticated as the pod's service account or from a kubeconfig, exec credential plugins included
(`credentials`). The permissions it needs, all in the pool's namespace:
`list` and `watch` on `pods`, on `inferencepools.inference.networking.k8s.io` and on
`inferenceobjectives.inference.networking.x-k8s.io`, and `get`, `list`, `watch` on `configmaps` (`get` only fetches
the configuration once at startup). The pool and the ConfigMap may be restricted with `resourceNames`: both are
listed and watched with a `metadata.name` field selector, which RBAC authorizes against `resourceNames` (the e2e
test runs the router under exactly that Role).
"""

from kvroute.router.datalayer.kubernetes.api import ApiError, KubeClient
from kvroute.router.datalayer.kubernetes.configmap import CONFIG_KEY, ConfigMapError, read_config_text
from kvroute.router.datalayer.kubernetes.credentials import (
    Cluster,
    KubeConfigError,
    in_cluster_config,
    load_kubeconfig,
    service_account_namespace,
)
from kvroute.router.datalayer.kubernetes.discovery import KubernetesDiscovery

__all__ = [
    "CONFIG_KEY",
    "ApiError",
    "Cluster",
    "ConfigMapError",
    "KubeClient",
    "KubeConfigError",
    "KubernetesDiscovery",
    "in_cluster_config",
    "load_kubeconfig",
    "read_config_text",
    "service_account_namespace",
]
