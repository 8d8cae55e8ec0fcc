"""`build_router(settings)`: the one place a router process is assembled from its settings.

In order: discovery (static endpoints, or the Ready pods of an InferencePool through the Kubernetes API, which
may also hold the configuration in a ConfigMap), fleet sync (static peers, or the router Deployment's pods), the
`RouterCore` (configuration, pool, scraper, Director) and the front doors asked for (the proxy, the ext_proc
server, or both on one Director). With `RouterSettings.worker` the process is one worker of a pod running several
(`runtime.worker`): its doors share their ports, it syncs with its sibling workers over IPC, and it answers for
the pod's metrics and reloads. `kvroute router` parses its flags into `RouterSettings` and calls it; front-door
modules are imported only for the doors asked for, the Kubernetes client only for Kubernetes discovery.

Errors: `SettingsError` (a `ValueError`) for settings that cannot be served, with a message naming what is wrong;
`ConfigError` for a rejected configuration; the Kubernetes client's `KubeConfigError` / `ConfigMapError` when the
API server or the configuration ConfigMap cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kvroute.router.config.reload import MAX_CONFIG_BYTES
from kvroute.router.fleet.defaults import DEFAULT_FLEET_PORT, DEFAULT_PEER_TIMEOUT, DEFAULT_SYNC_INTERVAL
from kvroute.router.fleet.peers import PeerSource, StaticPeers, WorkerPeers, default_replica_id, parse_peers
from kvroute.router.fleet.transport import FleetSettings
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES
from kvroute.router.runtime.core import CoreSettings, RouterCore
from kvroute.router.runtime.router import FrontDoor, Router, Service
from kvroute.router.runtime.worker import Siblings, WorkerPlan

if TYPE_CHECKING:
    from kvroute.router.datalayer.kubernetes.startup import KubernetesSource
    from kvroute.router.extproc.server import ExtProcSettings
    from kvroute.router.proxy.server import ProxyDoorSettings


class SettingsError(ValueError):
    """Router settings that cannot be served."""


@dataclass(frozen=True)
class KubernetesSettings:
    """Kubernetes discovery: the Ready pods of InferencePool `pool_name` are the endpoints."""

    pool_name: str
    namespace: str | None = None  # None: the router pod's namespace
    kubeconfig: str | None = None  # None: the pod's service account
    config_map: str | None = None  # a ConfigMap holding the configuration under key config.yaml, hot-reloaded


@dataclass(frozen=True)
class FleetOptions:
    """Fleet sync with the pool's other router replicas: `peers` (`HOST:PORT,...`) or, with Kubernetes discovery,
    `peer_selector` (`KEY=VALUE,...`, the pods of the router's Deployment)."""

    peers: str | None = None
    peer_selector: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_FLEET_PORT
    interval: float = DEFAULT_SYNC_INTERVAL
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    replica_id: str | None = None  # None: $POD_NAME, else <hostname>-<pid>


@dataclass(frozen=True)
class RouterSettings:
    endpoints: str | None = None  # static discovery: `IP:PORT[;LABEL=V...],...`
    kubernetes: KubernetesSettings | None = None
    config_text: str | None = None  # None: the ConfigMap's (Kubernetes), else the built-in default
    config_path: str | None = None  # the file config_text was read from: watched and reloadable
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_config_bytes: int = MAX_CONFIG_BYTES  # a larger config_path is not reloaded
    scrape_interval: float | None = None  # None: the configuration's metrics.scrapeInterval
    proxy: ProxyDoorSettings | None = None  # the OpenAI proxy door; None: not served
    extproc: ExtProcSettings | None = None  # the Envoy ext_proc door; None: not served
    fleet: FleetOptions | None = None  # None: no fleet sync
    breaker: BreakerSettings | None = None  # the endpoints' circuit breakers; None: the defaults
    worker: WorkerPlan | None = None  # one worker of a pod running several; None: the pod's only process


def build_router(settings: RouterSettings) -> Router:
    """The router process `settings` describe, not started (see the module's docstring for the errors)."""
    from kvroute.router.datalayer.static_discovery import parse_endpoints
    from kvroute.router.plugins.registry import REGISTRY

    kubernetes = _connect(settings.kubernetes) if settings.kubernetes is not None else None
    if kubernetes is None:
        if not settings.endpoints:
            raise SettingsError("no endpoints: give static endpoints or Kubernetes discovery")
        try:
            endpoints = parse_endpoints(settings.endpoints)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    elif settings.endpoints:
        raise SettingsError("static endpoints and Kubernetes discovery exclude each other")
    else:
        endpoints = []
    text = settings.config_text
    if text is None and kubernetes is not None:
        text = kubernetes.config_text
    core_settings = CoreSettings(
        max_body_bytes=settings.max_body_bytes,
        config_path=settings.config_path,
        max_config_bytes=settings.max_config_bytes,
        scrape_interval=settings.scrape_interval,
        fleet=_fleet(settings, kubernetes),
        breaker=settings.breaker,
    )
    core = RouterCore(endpoints, REGISTRY, core_settings, config_text=text)
    discovery: Service | None = None
    if kubernetes is not None:
        k8s = kubernetes.discovery(core.pool, core.holder, core.metrics)
        core.director.objectives = k8s.objectives  # the pool's InferenceObjectives, over the configured priorities
        discovery = k8s
    siblings = None if settings.worker is None else Siblings(settings.worker, core.holder, core.metrics)
    doors = _doors(settings, core, siblings)
    if siblings is not None:
        _check_shareable(core)
        doors.insert(0, siblings)  # first up, last down: the doors' metrics pages and reloads reach it
    return Router(core, doors, discovery)


def _doors(settings: RouterSettings, core: RouterCore, siblings: Siblings | None) -> list[FrontDoor]:
    doors: list[FrontDoor] = []
    worker = settings.worker
    if settings.proxy is not None:
        from kvroute.router.proxy.server import ProxyDoor

        proxy = settings.proxy
        if worker is not None:
            proxy = replace(proxy, reuse_port=True, admin=proxy.admin if worker.index == 0 else None)
        reload_siblings = None if siblings is None else siblings.reload_siblings
        doors.append(ProxyDoor(core.director, proxy, config_path=settings.config_path, reload_siblings=reload_siblings))
    if settings.extproc is not None:
        from kvroute.router.extproc.server import ExtProcDoor

        extproc = settings.extproc
        if worker is not None:
            extproc = replace(extproc, reuse_port=True)
        doors.append(ExtProcDoor(core.director, extproc))
    if not doors:
        raise SettingsError("no front door to serve: give the proxy's settings, the ext_proc server's, or both")
    return doors


def _check_shareable(core: RouterCore) -> None:
    """A KV events subscription that binds an address cannot be shared by a pod's workers."""
    for consumer in core.holder.current.kv_events_consumers:
        subscription = consumer.kv_events_subscription()
        if subscription.bind is not None:
            raise SettingsError(
                f"plugin {consumer.name!r} binds {subscription.bind} for KV events, which only one process can: "
                "run one worker (--workers 1), or let the router connect to each engine (kvEvents.endpointPort)"
            )


def _fleet(settings: RouterSettings, kubernetes: KubernetesSource | None) -> FleetSettings | None:
    if settings.worker is not None:
        return worker_fleet_settings(settings.worker, settings.fleet, kubernetes)
    return fleet_settings(settings.fleet, kubernetes) if settings.fleet is not None else None


def _connect(kubernetes: KubernetesSettings) -> KubernetesSource:
    from kvroute.router.datalayer.kubernetes.startup import connect

    return connect(
        pool_name=kubernetes.pool_name,
        kubeconfig=kubernetes.kubeconfig,
        namespace=kubernetes.namespace,
        config_map=kubernetes.config_map,
    )


def fleet_settings(options: FleetOptions, kubernetes: KubernetesSource | None) -> FleetSettings:
    """The fleet sync of `options`; the peers of a `peer_selector` are pods in the pool's namespace, watched
    through the same API server as discovery."""
    if (options.peers is None) == (options.peer_selector is None):
        raise SettingsError("fleet sync needs either static peers or a peer selector")
    peers: PeerSource
    if options.peers is not None:
        try:
            peers = StaticPeers(parse_peers(options.peers))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    else:
        if kubernetes is None:
            raise SettingsError("a fleet peer selector needs Kubernetes discovery")
        peers = _peer_pods(options.peer_selector or "", options.port, kubernetes)
    return FleetSettings(
        replica_id=options.replica_id or default_replica_id(),
        peers=peers,
        host=options.host,
        port=options.port,
        interval=options.interval,
        peer_timeout=options.peer_timeout,
    )


def worker_fleet_settings(
    plan: WorkerPlan, options: FleetOptions | None, kubernetes: KubernetesSource | None
) -> FleetSettings:
    """Fleet sync of worker `plan.index`: with its siblings over IPC, and, with `options`, with every worker of
    the pod's peer pods (worker i publishing on `options.port` + i)."""
    siblings = [f"ipc://{plan.fleet_path(i)}" for i in plan.siblings]
    if options is None:
        replica = f"{default_replica_id()}-w{plan.index}"
        return FleetSettings(
            replica_id=replica, peers=WorkerPeers(siblings, plan.count), tcp=False, ipc_path=plan.fleet_path(plan.index)
        )
    pod = fleet_settings(options, kubernetes)
    return replace(
        pod,
        replica_id=f"{pod.replica_id}-w{plan.index}",
        peers=WorkerPeers(siblings, plan.count, pod.peers),
        port=options.port + plan.index,
        ipc_path=plan.fleet_path(plan.index),
    )


def _peer_pods(selector: str, port: int, kubernetes: KubernetesSource) -> PeerSource:
    from kvroute.router.datalayer.kubernetes import KubeClient
    from kvroute.router.datalayer.kubernetes.peers import PeerPods
    from kvroute.router.fleet.peers import own_pod, parse_selector

    try:
        parsed = parse_selector(selector)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    name, ip = own_pod()
    return PeerPods(
        KubeClient(kubernetes.cluster),
        namespace=kubernetes.namespace,
        selector=parsed,
        port=port,
        own_name=name,
        own_ip=ip,
    )
