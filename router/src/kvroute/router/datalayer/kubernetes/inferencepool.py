"""The InferencePool (`inference.networking.k8s.io/v1`, `inferencepools`): what discovery reads of its spec.

Only `spec.selector` (which pods, in the pool's namespace) and `spec.targetPorts[].number` (the ports each pod
serves on; one endpoint per pod and port) matter to the router. `endpointPickerRef` and `appProtocol` concern
the gateway, and the router never writes the pool (neither spec nor status).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.router.datalayer.kubernetes.api import collection_path
from kvroute.router.datalayer.kubernetes.selector import LabelSelector

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
PLURAL = "inferencepools"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    selector: LabelSelector
    target_ports: tuple[int, ...]


def pools_path(namespace: str) -> str:
    return collection_path(namespace, PLURAL, GROUP, VERSION)


def parse_pool(pool: Mapping[str, Any]) -> PoolSpec:
    """Read an InferencePool object; raises `ValueError` naming the field at fault."""
    spec = pool.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec is missing")
    if spec.get("selector") is None:
        raise ValueError("spec.selector is missing")
    selector = LabelSelector.from_spec(spec["selector"], "spec.selector")
    ports = spec.get("targetPorts")
    if not isinstance(ports, list) or not ports:
        raise ValueError("spec.targetPorts must list at least one port")
    numbers: list[int] = []
    for index, port in enumerate(ports):
        number = port.get("number") if isinstance(port, Mapping) else None
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise ValueError(f"spec.targetPorts[{index}].number must be an integer in 1-65535, got {number!r}")
        if number in numbers:
            raise ValueError(f"spec.targetPorts[{index}].number {number} is listed twice")
        numbers.append(number)
    return PoolSpec(selector, tuple(numbers))
