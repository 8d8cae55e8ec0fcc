"""Pods to endpoints: which pods serve, and the `ip:port` endpoints each one contributes.

A pod serves when its `Ready` condition is `True`, it has no `deletionTimestamp` (a terminating pod may still
report Ready while it drains; new requests must not go there) and it has an IPv4 address (`status.podIP`, else
the first IPv4 entry of `status.podIPs`). A serving pod gives one endpoint per target port of the InferencePool,
`podIP:port`, carrying the pod's name, namespace and labels (labels decide roles and engine types downstream).

Endpoints come out sorted by pod name, then port, so the same pods always give the same pool. Two pods reporting
the same address (host-network pods, or a stale status) would give the same endpoint id twice: the first pod by
name keeps it, and the other is logged and left out.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kvroute.router.datalayer.kubernetes.selector import LabelSelector
from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodView:
    """What discovery keeps of a pod (a full pod object is tens of kilobytes)."""

    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ip: str | None = None
    ready: bool = False
    terminating: bool = False

    @property
    def serving(self) -> bool:
        return self.ready and not self.terminating and self.ip is not None


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Project a pod object; missing or malformed fields read as "not serving", never as an error."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = metadata.get("labels") or {}
    return PodView(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        labels=MappingProxyType({str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}),
        ip=_ipv4(status),
        ready=_ready(status),
        terminating=bool(metadata.get("deletionTimestamp")),
    )


def endpoints_for(pods: Iterable[PodView], ports: Sequence[int], selector: LabelSelector) -> list[Endpoint]:
    """The endpoints of the serving pods that `selector` matches, one per port."""
    endpoints: list[Endpoint] = []
    owners: dict[str, str] = {}
    for pod in sorted(pods, key=lambda p: p.name):
        if not pod.serving or not selector.matches(pod.labels):
            continue
        assert pod.ip is not None
        for port in ports:
            endpoint = Endpoint.create(pod.ip, port, pod_name=pod.name, namespace=pod.namespace, labels=pod.labels)
            owner = owners.setdefault(endpoint.id, pod.name)
            if owner != pod.name:
                log.warning("pods %s and %s both report endpoint %s; keeping %s", owner, pod.name, endpoint.id, owner)
                continue
            endpoints.append(endpoint)
    return endpoints


def _ready(status: Mapping[str, Any]) -> bool:
    for condition in status.get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _ipv4(status: Mapping[str, Any]) -> str | None:
    candidates = [status.get("podIP")]
    candidates += [entry.get("ip") for entry in status.get("podIPs") or () if isinstance(entry, dict)]
    for candidate in candidates:
        if not isinstance(candidate, str):
            continue
        try:
            return str(ipaddress.IPv4Address(candidate))
        except ValueError:
            continue
    return None
