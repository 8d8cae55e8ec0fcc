"""The operator's settings: command-line flags, each defaulting to a `KVROUTE_*` environment variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

FIELD_MANAGER = "kvroute-operator"
FINALIZER = "kvroute.io/operator"


def _version() -> str:
    try:
        return metadata.version("kvroute")
    except metadata.PackageNotFoundError:
        return "latest"


DEFAULT_ROUTER_IMAGE = f"kvroute-router:{_version()}"


@dataclass(frozen=True)
class OperatorSettings:
    router_image: str = DEFAULT_ROUTER_IMAGE
    router_image_pull_policy: str = "IfNotPresent"
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    kubeconfig: str | None = None  # None: in-cluster service account, else $KUBECONFIG or ~/.kube/config
    health_port: int = 8081  # GET /healthz (kopf's liveness endpoint); 0 disables it
    metrics_port: int = 9090  # GET /metrics (Prometheus); 0 disables it
    peering: str = "kvroute"  # the KopfPeering object shared by the replicas; one of them is active
    standalone: bool = False  # ignore peering even if the peering object exists
    log_level: str = "info"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


ENV = {
    "router_image": "KVROUTE_ROUTER_IMAGE",
    "router_image_pull_policy": "KVROUTE_ROUTER_IMAGE_PULL_POLICY",
    "namespaces": "KVROUTE_OPERATOR_NAMESPACES",  # comma-separated
    "health_port": "KVROUTE_OPERATOR_HEALTH_PORT",
    "metrics_port": "KVROUTE_OPERATOR_METRICS_PORT",
    "peering": "KVROUTE_OPERATOR_PEERING",
    "standalone": "KVROUTE_OPERATOR_STANDALONE",  # 1/true/yes
    "log_level": "KVROUTE_OPERATOR_LOG_LEVEL",
}


def env_default(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """The environment's value for setting `name` (see `ENV`), else `default`."""
    return (os.environ if environ is None else environ).get(ENV[name], default)


def parse_namespaces(text: str) -> tuple[str, ...]:
    return tuple(ns.strip() for ns in text.split(",") if ns.strip())


def parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")
