"""`KubernetesDiscovery`: the pool's endpoints, its objectives and the router's configuration, followed through the
API server.

Up to four watches run side by side (see `watch.Reflector` for how each survives errors):

- the **InferencePool** `pool_name` (by a `metadata.name` field selector, so RBAC may restrict the router to that
  one object). Its `spec.selector` chooses the pods; its `spec.targetPorts` the ports. A new selector restarts the
  pod watch with it; new ports only recompute the endpoints. A spec that cannot be read is logged and the last
  good one kept. Without the pool (not created yet, or deleted) there are no endpoints.
- the **Pods** the selector matches, in the pool's namespace, turned into endpoints by `pods.endpoints_for`.
- the router's **ConfigMap**, when one was given: see `configmap`.
- the namespace's **InferenceObjectives**, kept as the pool's objective -> priority mapping in `objectives` (an
  `ObjectivePriorities` provider; see `objectives`). `start()` does not wait for them: a cluster without the CRD
  serves with the configuration's priorities.

Every change recomputes the endpoint set and hands it to `EndpointPool.set_endpoints` on the next turn of the
event loop (a burst of events costs one recomputation), so a pod that stops being Ready, starts terminating or is
deleted leaves the candidate set as soon as its event arrives. `start()` waits (up to `sync_timeout`) until the
pool and its pods were listed once, so the router does not begin serving with an empty pool it could have
filled; it returns anyway after the timeout, and `/readyz` says "no endpoints" until they come. `stop()` cancels
every watch and closes the API client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.kubernetes.api import KubeClient, Object, collection_path
from kvroute.router.datalayer.kubernetes.configmap import CONFIG_KEY, ConfigMapReloader, configmaps_path
from kvroute.router.datalayer.kubernetes.inferencepool import PoolSpec, parse_pool, pools_path
from kvroute.router.datalayer.kubernetes.objectives import ObjectiveWatcher
from kvroute.router.datalayer.kubernetes.pods import PodView, endpoints_for, pod_view
from kvroute.router.datalayer.kubernetes.watch import Reflector
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)


class KubernetesDiscovery:
    def __init__(
        self,
        pool: EndpointPool,
        client: KubeClient,
        *,
        namespace: str,
        pool_name: str,
        holder: ConfigHolder | None = None,
        config_map: str | None = None,
        config_key: str = CONFIG_KEY,
        applied_config: str | None = None,
        metrics: RouterMetrics | None = None,
        sync_timeout: float = 10.0,
        watch_timeout: int = 300,
    ) -> None:
        if config_map is not None and holder is None:
            raise ValueError("watching a ConfigMap needs the ConfigHolder to reload")
        self.pool = pool
        self.client = client
        self.namespace = namespace
        self.pool_name = pool_name
        self._sync_timeout = sync_timeout
        self._watch_timeout = watch_timeout
        self._spec: PoolSpec | None = None
        self._pods: Mapping[str, PodView] = {}
        self._pods_reflector: Reflector[PodView] | None = None
        self._pods_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retired: set[asyncio.Task[None]] = set()  # pod watches cancelled on a selector change
        self._publish_scheduled = False
        self._synced = asyncio.Event()
        self._pool_reflector: Reflector[Object] = Reflector(
            client,
            pools_path(namespace),
            transform=_identity,
            on_change=self._on_pool,
            field_selector=f"metadata.name={pool_name}",
            description=f"InferencePool {namespace}/{pool_name}",
            watch_timeout=watch_timeout,
        )
        self.objectives = ObjectiveWatcher(
            client, namespace=namespace, pool_name=pool_name, watch_timeout=watch_timeout
        )
        self._config_reflector: Reflector[Object] | None = None
        if config_map is not None and holder is not None:
            reloader = ConfigMapReloader(holder, config_map, key=config_key, applied=applied_config, metrics=metrics)
            self._config_reflector = Reflector(
                client,
                configmaps_path(namespace),
                transform=_identity,
                on_change=reloader.on_change,
                field_selector=f"metadata.name={config_map}",
                description=f"ConfigMap {namespace}/{config_map}",
                watch_timeout=watch_timeout,
            )

    @property
    def spec(self) -> PoolSpec | None:
        """The InferencePool spec in force (None until the pool is seen, or after it is deleted)."""
        return self._spec

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._pool_reflector.run(), name="kvroute-k8s-watch-inferencepool"))
        if self._config_reflector is not None:
            self._tasks.append(loop.create_task(self._config_reflector.run(), name="kvroute-k8s-watch-configmap"))
        self.objectives.start()
        try:
            await asyncio.wait_for(self._synced.wait(), self._sync_timeout)
        except TimeoutError:
            log.warning(
                "InferencePool %s/%s and its pods were not listed within %gs; serving without endpoints until then",
                self.namespace,
                self.pool_name,
                self._sync_timeout,
            )

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._retired, *([self._pods_task] if self._pods_task else [])]
        self._tasks.clear()
        self._retired.clear()
        self._pods_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, self.objectives.stop(), return_exceptions=True)
        await self.client.close()

    async def __aenter__(self) -> KubernetesDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_pool(self, store: Mapping[str, Object]) -> None:
        obj = store.get(self.pool_name)
        if obj is None:
            if self._spec is not None:
                log.warning("InferencePool %s/%s is gone; no endpoints", self.namespace, self.pool_name)
            elif not self._synced.is_set():
                log.warning("InferencePool %s/%s does not exist (yet); no endpoints", self.namespace, self.pool_name)
            self._spec = None
            self._watch_pods(None)
            self._pods = {}
            self._schedule_publish()
            return
        try:
            spec = parse_pool(obj)
        except ValueError as exc:
            log.error("InferencePool %s/%s: %s; keeping the last good spec", self.namespace, self.pool_name, exc)
            self._schedule_publish()  # with no good spec yet, the pool is known to be empty: that is synced too
            return
        if spec == self._spec:
            return
        log.info(
            "InferencePool %s/%s: selector %s, target ports %s",
            self.namespace,
            self.pool_name,
            spec.selector,
            ",".join(map(str, spec.target_ports)),
        )
        previous, self._spec = self._spec, spec
        if previous is None or previous.selector != spec.selector:
            self._watch_pods(spec)
        self._schedule_publish()

    def _watch_pods(self, spec: PoolSpec | None) -> None:
        """(Re)start the pod watch for `spec`'s selector; stop it when `spec` is None."""
        if self._pods_task is not None:
            self._pods_task.cancel()
            self._retired.add(self._pods_task)
            self._pods_task.add_done_callback(self._retired.discard)
            self._pods_task = None
            self._pods_reflector = None
        if spec is None:
            return
        reflector: Reflector[PodView] = Reflector(
            self.client,
            collection_path(self.namespace, "pods"),
            transform=pod_view,
            on_change=lambda store: self._on_pods(reflector, store),
            label_selector=spec.selector.query() or None,
            description=f"pods of InferencePool {self.namespace}/{self.pool_name}",
            watch_timeout=self._watch_timeout,
        )
        self._pods_reflector = reflector
        self._pods_task = asyncio.get_running_loop().create_task(reflector.run(), name="kvroute-k8s-watch-pods")

    def _on_pods(self, reflector: Reflector[PodView], store: Mapping[str, PodView]) -> None:
        if reflector is not self._pods_reflector:
            return  # a watch for a selector that was replaced meanwhile
        self._pods = store
        self._schedule_publish()

    def _schedule_publish(self) -> None:
        if not self._publish_scheduled:
            self._publish_scheduled = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._publish_scheduled = False
        spec = self._spec
        # The selector is applied here too: until a restarted pod watch lists, the store holds the pods that the
        # previous selector matched.
        endpoints = [] if spec is None else endpoints_for(self._pods.values(), spec.target_ports, spec.selector)
        change = self.pool.set_endpoints(endpoints)
        if change:
            log.info(
                "endpoints of InferencePool %s/%s: %d (+%d -%d ~%d)",
                self.namespace,
                self.pool_name,
                len(endpoints),
                len(change.added),
                len(change.removed),
                len(change.updated),
            )
        if self._pool_reflector.synced.is_set() and (
            spec is None or (self._pods_reflector is not None and self._pods_reflector.synced.is_set())
        ):
            self._synced.set()


def _identity(obj: Object) -> Object:
    return obj
