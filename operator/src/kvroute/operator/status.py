"""A SchedulingProfile's status: which profile configures a pool, and its Accepted and Ready conditions.

- Accepted: True when this profile configures its pool. False with reason `PoolNotFound` (no such InferencePool in
  the namespace), `Conflict` (an older profile configures the pool: the oldest by creation time, then by name,
  wins) or `InvalidConfig` (the message lists every error with its path in the profile).
- Ready: True when the pool's router Deployment runs this profile's configuration (its config-hash annotation)
  and has a ready replica; otherwise False with the reason.
- objectives: the pool's InferenceObjectives (`kvroute.router.config.objectives`), `{name, priority}` sorted by
  name, with the priority the routers give their requests (0 when the objective sets none); at most
  `MAX_OBJECTIVES` of them, `objectiveCount` says how many there are. Reported by the profile that configures the
  pool (also while it is rejected: the routers apply objectives whatever their configuration); absent otherwise.

A condition's `lastTransitionTime` changes only when its status does, so a reconcile that finds nothing new
computes the status already stored and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kvroute.operator.resources.meta import ANNOTATION_CONFIG_HASH

ACCEPTED = "Accepted"
READY = "Ready"

REASON_ACCEPTED = "Accepted"
REASON_INVALID_CONFIG = "InvalidConfig"
REASON_CONFLICT = "Conflict"
REASON_POOL_NOT_FOUND = "PoolNotFound"
REASON_NOT_ACCEPTED = "NotAccepted"
REASON_ROUTER_AVAILABLE = "RouterAvailable"
REASON_ROUTER_UNAVAILABLE = "RouterUnavailable"
REASON_ROUTER_MISSING = "RouterMissing"
REASON_CONFIG_PENDING = "ConfigPending"
REASON_ROLLOUT = "RolloutInProgress"

_MAX_MESSAGE = 4096
MAX_OBJECTIVES = 64


class _StatusModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class ConditionModel(_StatusModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024)
    message: str = Field(max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)


class ObjectiveModel(_StatusModel):
    """An InferenceObjective of the pool."""

    name: str = Field(min_length=1, max_length=253)
    priority: int = Field(description="The priority the routers give the objective's requests (unset: 0).")


class ProfileStatus(_StatusModel):
    """The `status` of a SchedulingProfile."""

    observed_generation: int | None = Field(default=None, description="The generation the conditions describe.")
    config_hash: str | None = Field(default=None, description="Hash of the rendered router configuration.")
    router_deployment: str | None = Field(default=None, description="The pool's router Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready router pods.")
    objectives: list[ObjectiveModel] | None = Field(
        default=None,
        max_length=MAX_OBJECTIVES,
        description=f"The pool's InferenceObjectives, by name (the first {MAX_OBJECTIVES}).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    objective_count: int | None = Field(default=None, description="How many InferenceObjectives the pool has.")
    conditions: list[ConditionModel] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    new: Condition, previous: Sequence[Mapping[str, Any]], generation: int | None, at: str
) -> dict[str, Any]:
    status = "True" if new.status else "False"
    old = next((c for c in previous if c.get("type") == new.type), None)
    since = old["lastTransitionTime"] if old is not None and old.get("status") == status else at
    message = new.message if len(new.message) <= _MAX_MESSAGE else new.message[: _MAX_MESSAGE - 3] + "..."
    result: dict[str, Any] = {
        "type": new.type,
        "status": status,
        "reason": new.reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def profile_status(
    profile: Mapping[str, Any],
    accepted: Condition,
    ready: Condition,
    *,
    config_hash: str | None = None,
    router_deployment: str | None = None,
    ready_replicas: int | None = None,
    objectives: Mapping[str, int] | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """The complete status to store (absent fields as None, so a merge patch removes them). `objectives`: the
    pool's objective -> priority mapping, None for a profile that does not configure the pool."""
    generation = profile.get("metadata", {}).get("generation")
    previous = (profile.get("status") or {}).get("conditions") or []
    at = at or now()
    return {
        "observedGeneration": generation,
        "configHash": config_hash,
        "routerDeployment": router_deployment,
        "readyReplicas": ready_replicas,
        "objectives": None if objectives is None else objective_list(objectives),
        "objectiveCount": None if objectives is None else len(objectives),
        "conditions": [_condition(c, previous, generation, at) for c in (accepted, ready)],
    }


def objective_list(priorities: Mapping[str, int]) -> list[dict[str, Any]]:
    """`{name, priority}` of the first `MAX_OBJECTIVES` objectives by name (the CRD bounds the list)."""
    return [{"name": name, "priority": priorities[name]} for name in sorted(priorities)[:MAX_OBJECTIVES]]


def status_differs(profile: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    live = profile.get("status") or {}
    return any(live.get(key) != value for key, value in desired.items())


def _created(profile: Mapping[str, Any]) -> tuple[str, str]:
    meta = profile.get("metadata", {})
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


def elect(profiles: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """The profile that configures a pool (the oldest; the name breaks a tie) and the others, oldest first.
    Creation timestamps are RFC 3339 in UTC with one-second resolution, so they sort as text."""
    ordered = sorted(profiles, key=_created)
    return (ordered[0], ordered[1:]) if ordered else (None, [])


def accepted() -> Condition:
    return Condition(ACCEPTED, True, REASON_ACCEPTED, "the profile configures its pool's router")


def invalid(errors: Sequence[str]) -> Condition:
    return Condition(ACCEPTED, False, REASON_INVALID_CONFIG, "; ".join(errors))


def conflict(pool: str, winner: str) -> Condition:
    return Condition(
        ACCEPTED,
        False,
        REASON_CONFLICT,
        f'InferencePool "{pool}" is configured by the older SchedulingProfile "{winner}"',
    )


def pool_not_found(pool: str) -> Condition:
    return Condition(ACCEPTED, False, REASON_POOL_NOT_FOUND, f'no InferencePool "{pool}" in this namespace')


def not_ready_unaccepted() -> Condition:
    return Condition(READY, False, REASON_NOT_ACCEPTED, "the profile is not accepted (see the Accepted condition)")


def ready(deployment: Mapping[str, Any] | None, config_hash: str) -> tuple[Condition, int | None]:
    """Ready, and the ready replicas, of the router Deployment for the configuration `config_hash`."""
    if deployment is None:
        return Condition(READY, False, REASON_ROUTER_MISSING, "the router Deployment does not exist yet"), None
    meta = deployment.get("metadata", {})
    status = deployment.get("status") or {}
    ready_replicas = int(status.get("readyReplicas") or 0)
    if (meta.get("annotations") or {}).get(ANNOTATION_CONFIG_HASH) != config_hash:
        message = "the router Deployment runs another configuration"
        return Condition(READY, False, REASON_CONFIG_PENDING, message), ready_replicas
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    counted = f"{ready_replicas}/{replicas} router replicas ready"
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return Condition(READY, False, REASON_ROLLOUT, f"rollout in progress; {counted}"), ready_replicas
    available = any(c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or [])
    if available and ready_replicas > 0:
        return Condition(READY, True, REASON_ROUTER_AVAILABLE, counted), ready_replicas
    return Condition(READY, False, REASON_ROUTER_UNAVAILABLE, counted), ready_replicas
