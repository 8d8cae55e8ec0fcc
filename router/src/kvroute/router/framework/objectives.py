"""`ObjectivePriorities`: where a request's priority comes from, by the name of its inference objective.

A request names its objective in the `x-gateway-inference-objective` header (the `metadata.name` of an
InferenceObjective); the objective's `spec.priority` is the request's priority (higher is more important, negative
means sheddable). A provider answers for the objectives it knows and None for the others; the router then falls back
to the configuration (`admission.objectives`, `flowControl.objectives`) and finally to the default priority.
Providers are read on the event loop for every request: `priority_of` must not block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType


class ObjectivePriorities(ABC):
    @abstractmethod
    def priority_of(self, objective: str) -> int | None:
        """The priority of the objective named `objective`, or None when this provider does not know it."""


class StaticObjectivePriorities(ObjectivePriorities):
    """A fixed table of objective name -> priority (the configuration's)."""

    def __init__(self, priorities: Mapping[str, int]) -> None:
        self._priorities: Mapping[str, int] = MappingProxyType(dict(priorities))

    def priority_of(self, objective: str) -> int | None:
        return self._priorities.get(objective)


class LayeredObjectivePriorities(ObjectivePriorities):
    """The first provider that knows the objective answers (e.g. the cluster's objectives, then the config's)."""

    def __init__(self, *layers: ObjectivePriorities) -> None:
        self._layers = layers

    def priority_of(self, objective: str) -> int | None:
        for layer in self._layers:
            priority = layer.priority_of(objective)
            if priority is not None:
                return priority
        return None
