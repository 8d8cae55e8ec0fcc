"""What every child of a pool shares: deterministic names, labels, and the owner reference to the InferencePool.

Names derive from the pool's name only, so a reconcile always finds the objects the previous one made. A name or
label value that would be too long keeps a readable prefix and ends in a hash of the whole, so it stays unique.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.operator.models import InferencePoolSpec

POOL_GROUP = "inference.networking.k8s.io"
POOL_API_VERSION = f"{POOL_GROUP}/v1"
POOL_KIND = "InferencePool"
OBJECTIVE_GROUP = "inference.networking.x-k8s.io"

MANAGED_BY = "kvroute-operator"
ROUTER_APP = "kvroute-router"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POOL = "kvroute.io/pool"
ANNOTATION_CONFIG_HASH = "kvroute.io/config-hash"

_MAX_NAME = 63  # a DNS label: valid for every kind the operator creates, and for pod hostnames derived from it


def bounded(value: str, limit: int = _MAX_NAME) -> str:
    """`value`, or when longer than `limit` a prefix of it, a dash and 10 hex digits of its hash."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{value[: limit - 11].rstrip('.-')}-{digest}"


@dataclass(frozen=True)
class Pool:
    """An InferencePool as its children need it."""

    namespace: str
    name: str
    uid: str
    spec: InferencePoolSpec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Pool:
        meta = obj["metadata"]
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            spec=InferencePoolSpec.model_validate(obj.get("spec") or {}),
        )

    @property
    def router_name(self) -> str:
        """The Deployment, ServiceAccount, Role and RoleBinding."""
        return bounded(f"{self.name}-kvroute")

    @property
    def config_map_name(self) -> str:
        return bounded(f"{self.name}-kvroute-config")

    @property
    def service_name(self) -> str | None:
        """The Service the pool's endpointPickerRef names, when it names a Service with a port."""
        ref = self.spec.endpoint_picker_ref
        return ref.name if ref is not None and ref.is_service else None

    @property
    def service_port(self) -> int | None:
        ref = self.spec.endpoint_picker_ref
        return ref.port.number if ref is not None and ref.is_service and ref.port is not None else None


def selector_labels(pool: Pool) -> dict[str, str]:
    """The router pods' selector: fixed for the Deployment's lifetime (a Deployment's selector is immutable)."""
    return {LABEL_NAME: ROUTER_APP, LABEL_INSTANCE: bounded(pool.name)}


def labels(pool: Pool) -> dict[str, str]:
    return {
        **selector_labels(pool),
        LABEL_COMPONENT: "endpoint-picker",
        LABEL_PART_OF: "kvroute",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POOL: bounded(pool.name),
    }


def owner_reference(pool: Pool) -> dict[str, Any]:
    """The pool controls its children: they are garbage-collected with it."""
    return {
        "apiVersion": POOL_API_VERSION,
        "kind": POOL_KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(pool: Pool, name: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": pool.namespace,
        "labels": labels(pool),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    meta["ownerReferences"] = [owner_reference(pool)]
    return meta
