"""`ObjectiveWatcher`: the pool's InferenceObjectives, followed through the API server, as request priorities.

It lists and watches every InferenceObjective (`inference.networking.x-k8s.io/v1alpha2`) in the pool's namespace
and keeps those whose `spec.poolRef` names the pool (`kvroute.router.config.objectives.pool_priorities`: unset
priority 0, objectives of other pools and ones being deleted left out). A poolRef cannot be selected on the server,
so the router needs `list` and `watch` on `inferenceobjectives` in the namespace, without `resourceNames`.

It is the cluster's `ObjectivePriorities` provider: `priority_of(name)` answers for the pool's objectives and None
for any other name, so that the router falls back to its configuration and then to the default priority.
`priorities()` is a copy of the whole mapping; `subscribe(callback)` calls `callback(priorities)` on the event
loop after every change of the mapping (not for events that leave it as it was). Each change is logged once, at
info, as `name=priority` pairs.

Without the CRD in the cluster (404) or without the permission (403) the watch logs a warning, keeps retrying with
backoff (`watch.Reflector`) and the mapping stays empty: requests keep the configuration's priorities. Once the
CRD or the permission appears, the objectives arrive within the backoff (at most about ten seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

from kvroute.router.config.objectives import GROUP, PLURAL, VERSION, pool_priorities
from kvroute.router.datalayer.kubernetes.api import KubeClient, Object, collection_path
from kvroute.router.datalayer.kubernetes.watch import Reflector
from kvroute.router.framework.objectives import ObjectivePriorities

log = logging.getLogger(__name__)

PrioritiesCallback = Callable[[Mapping[str, int]], None]


def objectives_path(namespace: str) -> str:
    return collection_path(namespace, PLURAL, GROUP, VERSION)


class ObjectiveWatcher(ObjectivePriorities):
    def __init__(self, client: KubeClient, *, namespace: str, pool_name: str, watch_timeout: int = 300) -> None:
        self.namespace = namespace
        self.pool_name = pool_name
        self._priorities: Mapping[str, int] = MappingProxyType({})
        self._invalid: dict[str, str] = {}
        self._callbacks: list[PrioritiesCallback] = []
        self._task: asyncio.Task[None] | None = None
        self.reflector: Reflector[Object] = Reflector(
            client,
            objectives_path(namespace),
            transform=_identity,
            on_change=self._on_objectives,
            description=f"InferenceObjectives in {namespace}",
            watch_timeout=watch_timeout,
        )

    def priority_of(self, objective: str) -> int | None:
        return self._priorities.get(objective)

    def priorities(self) -> dict[str, int]:
        """The pool's objectives now: name -> priority."""
        return dict(self._priorities)

    def subscribe(self, callback: PrioritiesCallback) -> None:
        """Call `callback(priorities)` after every change of the mapping (on the event loop; must not block)."""
        self._callbacks.append(callback)

    @property
    def synced(self) -> bool:
        """Whether the objectives were listed at least once."""
        return self.reflector.synced.is_set()

    def start(self) -> None:
        """Starts the watch on the running loop (it does not wait for the first list)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.reflector.run(), name="kvroute-k8s-watch-inferenceobjectives"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _on_objectives(self, store: Mapping[str, Object]) -> None:
        found = pool_priorities(store.values(), self.pool_name)
        for name, error in found.invalid.items():
            if self._invalid.get(name) != error:
                log.error("InferenceObjective %s/%s: %s; ignored", self.namespace, name, error)
        self._invalid = found.invalid
        if found.priorities == self._priorities:
            return
        self._priorities = MappingProxyType(found.priorities)
        listed = ", ".join(f"{name}={priority}" for name, priority in sorted(found.priorities.items())) or "none"
        log.info("InferenceObjectives of InferencePool %s/%s: %s", self.namespace, self.pool_name, listed)
        for callback in list(self._callbacks):
            try:
                callback(self._priorities)
            except Exception:
                log.exception("InferenceObjective change callback failed")


def _identity(obj: Object) -> Object:
    return obj
