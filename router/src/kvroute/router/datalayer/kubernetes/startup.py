"""What `kvroute router --discovery kubernetes` settles before it starts serving.

`connect()` works out where the API server is (in-cluster service account, or `--kubeconfig`, running its exec
credential plugin if it has one), which namespace the
pool lives in, and, with `--config-configmap`, fetches the configuration document once, so that the router starts
with its real configuration and a bad one fails at startup as `--config FILE` does. The fetch is retried for
`startup_timeout` seconds while the API server is unreachable, answers 5xx or does not have the ConfigMap yet
(the router may start before its ConfigMap exists); a refusal (401, 403) or a ConfigMap without the key fails at
once. `KubernetesSource.discovery()` then builds the `KubernetesDiscovery` on the router's pool and configuration.

Namespace: `--pool-namespace`, else the kubeconfig context's namespace, else the namespace of the pod the router
runs in (the service account's `namespace` file).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.kubernetes.api import ApiError, KubeClient
from kvroute.router.datalayer.kubernetes.configmap import ConfigMapError, read_config_text
from kvroute.router.datalayer.kubernetes.credentials import (
    Cluster,
    KubeConfigError,
    in_cluster_config,
    load_kubeconfig,
    service_account_namespace,
)
from kvroute.router.datalayer.kubernetes.discovery import KubernetesDiscovery
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.observability import RouterMetrics

STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class KubernetesSource:
    cluster: Cluster
    namespace: str
    pool_name: str
    config_map: str | None = None
    config_text: str | None = None  # the ConfigMap's document as read at startup

    def discovery(
        self, pool: EndpointPool, holder: ConfigHolder, metrics: RouterMetrics | None = None
    ) -> KubernetesDiscovery:
        return KubernetesDiscovery(
            pool,
            KubeClient(self.cluster),
            namespace=self.namespace,
            pool_name=self.pool_name,
            holder=holder,
            config_map=self.config_map,
            applied_config=self.config_text,
            metrics=metrics,
        )


def connect(
    *,
    pool_name: str,
    kubeconfig: str | None = None,
    namespace: str | None = None,
    config_map: str | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> KubernetesSource:
    """Blocking (call it before the server's event loop starts). Raises `KubeConfigError` for missing credentials
    or namespace, `ConfigMapError` when the configuration document cannot be had."""
    cluster = asyncio.run(load_kubeconfig(kubeconfig)) if kubeconfig else in_cluster_config()
    namespace = namespace or cluster.namespace or service_account_namespace()
    if not namespace:
        raise KubeConfigError("--pool-namespace is required when the router does not run in a pod")
    text = None
    if config_map is not None:
        text = asyncio.run(_fetch_config(cluster, namespace, config_map, startup_timeout))
    return KubernetesSource(cluster, namespace, pool_name, config_map, text)


async def _fetch_config(cluster: Cluster, namespace: str, name: str, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    async with KubeClient(cluster) as client:
        while True:
            try:
                return await read_config_text(client, namespace, name)
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                retriable = not isinstance(exc, ApiError) or exc.status == 404 or exc.status >= 500
                if not retriable or loop.time() + delay > deadline:
                    raise ConfigMapError(f"cannot read ConfigMap {namespace}/{name}: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
