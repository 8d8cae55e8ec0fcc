"""What the handlers share for the operator's lifetime: settings, the plugin registry, the API client, metrics, a
lock per pool (so that events of a pool, its profiles and its Deployment reconcile it one at a time) and the
generations already reconciled (so that status-only updates, the operator's own included, cost nothing).

It reaches the kopf handlers through kopf's memo (`memo.kvroute`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from kvroute.operator.kube import Credentials, KubeApi, load_credentials
from kvroute.operator.settings import OperatorSettings
from kvroute.router.config.builder import Registry

PoolKey = tuple[str, str]  # namespace, name
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf passes to handlers


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "kvroute_operator_reconciles_total",
            "Pool reconciles by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "kvroute_operator_reconcile_duration_seconds",
            "Time to reconcile one pool.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.writes = Counter(
            "kvroute_operator_writes_total",
            "Objects written (server-side applies of children, status patches of profiles), by kind.",
            ["kind"],
            registry=self.registry,
        )


@dataclass
class OperatorContext:
    settings: OperatorSettings
    registry: Registry
    credentials: Credentials | None = None  # fixed credentials; None: load them at every login (see `login`)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    api: KubeApi = field(init=False)
    _locks: weakref.WeakValueDictionary[PoolKey, asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)
    _generations: dict[str, int] = field(default_factory=dict)  # uid -> last reconciled generation
    _profile_pools: dict[str, PoolKey] = field(default_factory=dict)  # profile/objective uid -> pool it referred to

    def __post_init__(self) -> None:
        self.api = KubeApi(self.login)

    async def login(self) -> Credentials:
        """The fixed credentials; else the kubeconfig when one was given; else the pod's service account, else the
        kubeconfig ($KUBECONFIG or ~/.kube/config). kopf and the operator's own client use the same credentials."""
        if self.credentials is not None:
            return self.credentials
        return await load_credentials(self.settings.kubeconfig)

    def lock(self, key: PoolKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def unchanged(self, body: Mapping[str, Any], event_type: str | None) -> bool:
        """True for a modification that left the spec as last reconciled (generation unchanged)."""
        meta = body.get("metadata", {})
        generation = meta.get("generation")
        return (
            event_type == "MODIFIED"
            and generation is not None
            and self._generations.get(meta.get("uid", "")) == generation
        )

    def reconciled(self, body: Mapping[str, Any], event_type: str | None, pool: PoolKey | None = None) -> None:
        """Records a successful reconcile of `body` (and, for a profile or an objective, the pool it refers to)."""
        meta = body.get("metadata", {})
        uid = meta.get("uid", "")
        if event_type == "DELETED":
            self._generations.pop(uid, None)
            self._profile_pools.pop(uid, None)
            return
        if meta.get("generation") is not None:
            self._generations[uid] = meta["generation"]
        if pool is not None:
            self._profile_pools[uid] = pool

    def previous_pool(self, uid: str) -> PoolKey | None:
        """The pool a profile (or an objective) referred to when it was last reconciled."""
        return self._profile_pools.get(uid)
