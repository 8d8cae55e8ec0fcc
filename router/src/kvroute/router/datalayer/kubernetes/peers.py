"""Fleet peers from the API server: the addresses of the other router replicas of a pool, followed by a pod watch.

`PeerPods` lists and watches, in one namespace, the pods a label selector matches (the router Deployment's own
pod labels) with a `watch.Reflector`, and reports `ip:port` for every such pod that has an IPv4 address and is not
finished (phase `Succeeded` or `Failed`), leaving out the router's own pod (by name, or by IP when the name is not
known). Every change of that set is handed to `update` on the event loop.

Unlike model-server discovery, readiness does not matter here: a replica that is not Ready yet makes no routing
decisions, so subscribing early costs nothing and nothing it sends later is missed while a connection is set up;
a replica that is terminating still drains its requests, and its completions must reach the peers. A pod leaves
the set when it is deleted, finishes or loses its address. The router's Role needs `list` and `watch` on pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.router.datalayer.kubernetes.api import KubeClient, collection_path
from kvroute.router.datalayer.kubernetes.pods import pod_view
from kvroute.router.datalayer.kubernetes.selector import LabelSelector
from kvroute.router.datalayer.kubernetes.watch import Reflector

log = logging.getLogger(__name__)

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class PeerPod:
    name: str
    labels: Mapping[str, str]
    ip: str | None
    finished: bool


def peer_pod(pod: Mapping[str, Any]) -> PeerPod:
    view = pod_view(pod)
    phase = (pod.get("status") or {}).get("phase")
    return PeerPod(view.name, view.labels, view.ip, phase in FINISHED_PHASES)


def peer_addresses(
    pods: Iterable[PeerPod],
    port: int,
    selector: LabelSelector,
    *,
    own_name: str | None = None,
    own_ip: str | None = None,
) -> frozenset[str]:
    """`ip:port` of the pods that may run a peer: matching `selector`, with an address, not finished, and not the
    router's own pod."""
    addresses = set()
    for pod in pods:
        if pod.ip is None or pod.finished or pod.name == own_name or not selector.matches(pod.labels):
            continue
        if own_name is None and pod.ip == own_ip:
            continue
        addresses.add(f"{pod.ip}:{port}")
    return frozenset(addresses)


class PeerPods:
    """A `kvroute.router.fleet.peers.PeerSource` backed by a pod watch."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        selector: LabelSelector,
        port: int,
        own_name: str | None = None,
        own_ip: str | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.selector = selector
        self.port = port
        self._own_name = own_name
        self._own_ip = own_ip
        self._update: Callable[[frozenset[str]], None] | None = None
        self._addresses: frozenset[str] = frozenset()
        self._listed = False  # the first list is reported even when it finds no peer
        self._task: asyncio.Task[None] | None = None
        self._reflector: Reflector[PeerPod] = Reflector(
            client,
            collection_path(namespace, "pods"),
            transform=peer_pod,
            on_change=self._on_pods,
            label_selector=selector.query() or None,
            description=f"fleet peer pods {namespace}/{selector}",
            watch_timeout=watch_timeout,
        )

    @property
    def addresses(self) -> frozenset[str]:
        return self._addresses

    async def start(self, update: Callable[[frozenset[str]], None]) -> None:
        """Starts the watch; `update(addresses)` is called with the whole set after every change."""
        self._update = update
        self._task = asyncio.get_running_loop().create_task(self._reflector.run(), name="kvroute-k8s-watch-peers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.close()

    def _on_pods(self, store: Mapping[str, PeerPod]) -> None:
        addresses = peer_addresses(
            store.values(), self.port, self.selector, own_name=self._own_name, own_ip=self._own_ip
        )
        if addresses == self._addresses and self._listed:
            return
        self._listed = True
        added, removed = addresses - self._addresses, self._addresses - addresses
        self._addresses = addresses
        log.info(
            "fleet peers in %s matching %s: %d (+%s -%s)",
            self.namespace,
            self.selector,
            len(addresses),
            ",".join(sorted(added)) or "0",
            ",".join(sorted(removed)) or "0",
        )
        if self._update is not None:
            self._update(addresses)
