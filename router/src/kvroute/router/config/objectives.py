"""InferenceObjectives (`inference.networking.x-k8s.io/v1alpha2`) as request priorities: objective name -> priority.

A request names its objective by `metadata.name` in the `x-gateway-inference-objective` header; the objective's
`spec.priority` becomes the request's priority (higher is more important, negative means sheddable). The router's
objective watch and the operator's SchedulingProfile status both read objectives through `pool_priorities`, so the
priorities a router applies are the ones the status reports.

An objective belongs to a pool when it lives in the pool's namespace (the caller lists that namespace only) and its
`spec.poolRef` names the pool: `name` equal to the pool's name, `group` (default `inference.networking.k8s.io`) and
`kind` (default `InferencePool`) those of an InferencePool. An unset `spec.priority` means 0 (the upstream field has
no schema default; consumers treat unset as 0). An objective being deleted (with a `deletionTimestamp`) no longer
counts; one whose priority is not an integer is left out and reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "inference.networking.x-k8s.io"
VERSION = "v1alpha2"
PLURAL = "inferenceobjectives"
KIND = "InferenceObjective"
POOL_GROUP = "inference.networking.k8s.io"
POOL_KIND = "InferencePool"
DEFAULT_PRIORITY = 0


@dataclass(frozen=True)
class PoolObjectives:
    """The objectives of one pool: `priorities` (name -> priority) and the ones left out, with the reason."""

    priorities: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)


def pool_of(objective: Mapping[str, Any]) -> str | None:
    """The name of the InferencePool `objective` refers to, or None when its poolRef names something else."""
    spec = objective.get("spec")
    ref = spec.get("poolRef") if isinstance(spec, Mapping) else None
    if not isinstance(ref, Mapping):
        return None
    if (ref.get("group") or POOL_GROUP) != POOL_GROUP or (ref.get("kind") or POOL_KIND) != POOL_KIND:
        return None
    name = ref.get("name")
    return name if isinstance(name, str) and name else None


def priority_of(objective: Mapping[str, Any]) -> int:
    """`spec.priority`, 0 when unset; raises `ValueError` when it is not an integer."""
    spec = objective.get("spec")
    value = spec.get("priority") if isinstance(spec, Mapping) else None
    if value is None:
        return DEFAULT_PRIORITY
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"spec.priority must be an integer, got {value!r}")
    return value


def pool_priorities(objectives: Iterable[Mapping[str, Any]], pool: str) -> PoolObjectives:
    """The objectives among `objectives` (one namespace's) that belong to InferencePool `pool`."""
    result = PoolObjectives()
    for objective in objectives:
        meta = objective.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name or meta.get("deletionTimestamp") or pool_of(objective) != pool:
            continue
        try:
            result.priorities[name] = priority_of(objective)
        except ValueError as exc:
            result.invalid[name] = str(exc)
    return result
