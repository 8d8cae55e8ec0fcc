"""Shared fixtures for the operator's tests: InferencePool and SchedulingProfile objects, the router's plugin
registry, and `running_operator`, the whole operator (kopf and its handlers) against kmock's API emulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import kmock
import kopf
import pytest
from kubernetes_asyncio.client import Configuration

from kvroute.operator.cli import serve
from kvroute.operator.context import OperatorMetrics
from kvroute.operator.kube import Credentials
from kvroute.operator.settings import OperatorSettings
from kvroute.router.config.builder import Registry
from kvroute.router.plugins.registry import REGISTRY

NAMESPACE = "ml"
ROUTER_IMAGE = "registry.example/kvroute-router:test"
_UIDS = itertools.count(1)

POOLS = "inference.networking.k8s.io/v1/inferencepools"
PROFILES = "kvroute.io/v1alpha1/schedulingprofiles"
OBJECTIVES = "inference.networking.x-k8s.io/v1alpha2/inferenceobjectives"
CONFIG_MAPS = "v1/configmaps"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
SERVICE_ACCOUNTS = "v1/serviceaccounts"
ROLES = "rbac.authorization.k8s.io/v1/roles"
ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/rolebindings"


@pytest.fixture
def registry() -> Registry:
    return REGISTRY


def pool_object(
    name: str = "llama", *, namespace: str = NAMESPACE, picker: str | None = "llama-epp", port: int = 9002
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": 8000}]}
    if picker is not None:
        spec["endpointPickerRef"] = {"name": picker, "port": {"number": port}}
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace, "uid": f"pool-{next(_UIDS)}", "generation": 1},
        "spec": spec,
    }


def objective_object(
    name: str, pool: str = "llama", priority: int | None = None, *, namespace: str = NAMESPACE
) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": namespace, "uid": f"objective-{next(_UIDS)}", "generation": 1},
        "spec": spec,
    }


def profile_spec(pool: str = "llama", **extra: Any) -> dict[str, Any]:
    """A valid SchedulingProfile spec: prefix affinity, queue, a picker."""
    return {
        "poolRef": {"name": pool},
        "plugins": [
            {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 16}},
            {"type": "queue-scorer"},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                    {"pluginRef": "queue-scorer", "weight": 1},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
        **extra,
    }


def profile_object(
    name: str = "fast",
    spec: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    created: str = "2026-01-01T00:00:00Z",
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "kvroute.io/v1alpha1",
        "kind": "SchedulingProfile",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"profile-{next(_UIDS)}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": dict(spec if spec is not None else profile_spec()),
    }


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus two things of a real API server the operator relies on: a server-side apply creates
    an absent object, and every write sets a new resourceVersion (kopf waits for it after its own patches)."""

    _versions = itertools.count(100)

    async def _handle(self, request: kmock.Request) -> Any:
        writing = request.method in ("POST", "PUT", "PATCH") and request.resource is not None
        if writing:
            version = str(next(self._versions))
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):  # a JSON patch (kopf's, adding its finalizer)
                # kmock answers a failed `test` with 500, which kopf retries with the same stale version;
                # a real server answers 409 and kopf refetches. Writes to one object do not race here anyway.
                request.data[:] = [op for op in request.data if op.get("op") != "test"]
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        content_type = request.headers.get("Content-Type", "")
        if writing and content_type.startswith("application/apply-patch") and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self.objects or self.objects[key].deleted:
                    metadata = {**request.data["metadata"], "uid": f"child-{next(_UIDS)}"}
                    created = {**request.data, "metadata": metadata}
                    if key in self.objects:
                        self.objects[key].create(created)
                    else:
                        self.objects[key] = created
                    await self._buses[request.resource].put({"type": "ADDED", "object": self.objects[key].raw})
        return await super()._handle(request)


ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


@dataclass
class RunningOperator:
    api: Any  # the kmock emulator
    metrics: OperatorMetrics

    def obj(self, resource: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return dict(self.api.objects[key].raw)

    def put(self, resource: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.api.objects[kmock.resource(resource), meta["namespace"], meta["name"]] = dict(body)

    async def request(self, method: str, resource: str, body: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """A request through the API (so that watchers see it) on the collection of `resource`, or on one object
        when `name` is given; `subresource` ("status") and a `content_type` are optional."""
        group_version, plural = resource.rsplit("/", 1)
        root = "/api" if "/" not in group_version else "/apis"
        path = f"{root}/{group_version}/namespaces/{kw.get('namespace', NAMESPACE)}/{plural}"
        if "name" in kw:
            path += f"/{kw['name']}"
        if "subresource" in kw:
            path += f"/{kw['subresource']}"
        headers = {"Content-Type": kw.get("content_type", "application/json")}
        async with self.api.request(method, path, json=body, headers=headers) as response:
            assert response.status < 400, await response.text()
            return await response.json()

    async def create(self, resource: str, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", resource, body, namespace=body["metadata"]["namespace"])

    async def patch(self, resource: str, name: str, patch: Mapping[str, Any], **kw: Any) -> Any:
        return await self.request(
            "PATCH", resource, patch, name=name, content_type="application/merge-patch+json", **kw
        )

    async def delete(self, resource: str, name: str) -> Any:
        return await self.request("DELETE", resource, name=name)

    def reconciles(self) -> float:
        return self.metrics.registry.get_sample_value("kvroute_operator_reconciles_total", {"result": "ok"}) or 0.0

    def condition(self, profile: str, kind: str) -> dict[str, Any]:
        """A condition of a SchedulingProfile's status ({} when absent)."""
        conditions = ((self.obj(PROFILES, profile) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def writes(self) -> list[str]:
        """Every write request so far, as "METHOD path"."""
        methods = ("POST", "PUT", "PATCH", "DELETE")
        return [f"{r.method.value} {r.url.path}" for r in list(self.api) if r.method in methods]


async def settled(op: RunningOperator, quiet: float = 0.5, timeout: float = 10.0) -> list[str]:
    """Waits until the operator has reconciled and then made no request for `quiet` seconds; returns the writes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = -1
    while loop.time() < deadline:
        count = len(list(op.api))
        if count == seen:
            return op.writes()
        seen = count
        await asyncio.sleep(quiet)
    pytest.fail("the operator never settled")


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApplyingEmulator}


class _OperatorThread(threading.Thread):
    """The operator in a thread with its own event loop, as in a process of its own: at exit kopf cancels every
    task its loop started meanwhile, which in the test's loop would include pytest's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(name="kvroute-operator", daemon=True)
        self._args, self._kwargs = args, kwargs
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_flag = asyncio.Event()
        ready = asyncio.Event()
        waiter = asyncio.create_task(ready.wait())
        waiter.add_done_callback(lambda _: self.started.set())
        await serve(*self._args, stop=self._stop_flag, ready=ready, **self._kwargs)

    def stop(self) -> None:
        if self._loop is not None and self._stop_flag is not None:
            self._loop.call_soon_threadsafe(self._stop_flag.set)


def declare_resources(kmock: Any) -> None:
    """What kopf needs to find before it watches anything, and what the operator reads and writes."""
    for resource, kind, namespaced in (
        ("v1/namespaces", "Namespace", False),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
        ("v1/events", "Event", True),
        (POOLS, "InferencePool", True),
        (PROFILES, "SchedulingProfile", True),
        (OBJECTIVES, "InferenceObjective", True),
        (CONFIG_MAPS, "ConfigMap", True),
        (SERVICES, "Service", True),
        (SERVICE_ACCOUNTS, "ServiceAccount", True),
        (ROLES, "Role", True),
        (ROLE_BINDINGS, "RoleBinding", True),
        (DEPLOYMENTS, "Deployment", True),
    ):
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=ALL_VERBS)


@contextlib.asynccontextmanager
async def operator_running(kmock: Any, registry: Registry, **settings: Any) -> AsyncIterator[RunningOperator]:
    """The operator against `kmock` (in a thread of its own) with these `OperatorSettings`."""
    declare_resources(kmock)
    options = {"router_image": ROUTER_IMAGE, "health_port": 0, "metrics_port": 0, "standalone": True, **settings}
    metrics = OperatorMetrics()
    fast = kopf.OperatorSettings()
    fast.queueing.exit_timeout = 0.1  # the emulator has nothing left to deliver at the end of a test
    fast.queueing.idle_timeout = 0.2  # idle workers would otherwise delay the exit by 5 s
    credentials = Credentials(Configuration(host=str(kmock.url).rstrip("/")))
    thread = _OperatorThread(
        OperatorSettings(**options), registry, kopf_settings=fast, credentials=credentials, metrics=metrics
    )
    thread.start()
    assert await asyncio.to_thread(thread.started.wait, 10), "the operator did not start"
    running = RunningOperator(kmock, metrics)
    try:
        yield running
        # Stopping amid a reconcile can leave a timer kopf starts late, which delays its exit by 5 s.
        await settled(running)
    finally:
        thread.stop()
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop"


@pytest.fixture
async def running_operator(kmock: Any, registry: Registry) -> AsyncIterator[RunningOperator]:
    async with operator_running(kmock, registry) as running:
        yield running
