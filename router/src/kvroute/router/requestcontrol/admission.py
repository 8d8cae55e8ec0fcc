"""Admission: whether a request may be scheduled at all, decided before the scheduler runs.

A request's priority comes from its objective, named by the `x-gateway-inference-objective` header and looked up
first from the `ObjectivePriorities` provider (the cluster's InferenceObjectives), then in the configured objectives
(name -> priority, as in InferenceObjective `spec.priority`; higher is more important). No header, or an objective
this router does not know, gives `default_priority`.

Decision, in order (the same as GIE's endpoint picker without its flow-control layer):

1. no candidate endpoints -> `NoEndpointsError` (the front door answers 503);
2. priority >= 0 -> admitted, however loaded the pool is;
3. priority < 0 ("sheddable") -> `AdmissionRejected(429)` when the saturation detector reports
   `saturation(candidates) >= 1.0`, else admitted. Without a detector nothing is ever shed.

Requests are never queued here: a rejected request is answered at once and the client may retry. With
`flowControl` the Director builds this without a detector, so nothing is shed: saturation makes requests wait in
the flow-control queue instead (`requestcontrol.flowcontrol`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.framework.endpoint import Endpoint
from kvroute.router.framework.objectives import ObjectivePriorities
from kvroute.router.framework.plugins import NoEndpointsError, SaturationDetector
from kvroute.router.framework.request import LLMRequest

OBJECTIVE_HEADER = "x-gateway-inference-objective"


class AdmissionRejected(Exception):
    """The request is refused before scheduling; the front door answers `status` with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Admission:
    def __init__(
        self,
        detector: SaturationDetector | None,
        objectives: Mapping[str, int],
        default_priority: int = 0,
        provider: ObjectivePriorities | None = None,
    ) -> None:
        self._detector = detector
        self._provider = provider
        self._objectives: Mapping[str, int] = MappingProxyType(dict(objectives))
        self._default_priority = default_priority

    def objective_for(self, headers: Mapping[str, str], *, lower_case: bool = False) -> str | None:
        """The objective named by the request's headers (matched case-insensitively; `lower_case`: every name in
        `headers` is lower case already), or None."""
        value = headers.get(OBJECTIVE_HEADER)
        if value is None and not lower_case:
            value = next((v for k, v in headers.items() if k.lower() == OBJECTIVE_HEADER), None)
        if value is None:
            return None
        return value.strip() or None

    def priority_for(self, headers: Mapping[str, str]) -> int:
        return self.priority_of(self.objective_for(headers))

    def priority_of(self, objective: str | None) -> int:
        """The priority of requests naming `objective` (None: none named)."""
        if objective is None:
            return self._default_priority
        if self._provider is not None:
            priority = self._provider.priority_of(objective)
            if priority is not None:
                return priority
        return self._objectives.get(objective, self._default_priority)

    def admit(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> None:
        """Return if `request` may be scheduled on `candidates`; raise `NoEndpointsError` or `AdmissionRejected`."""
        if not candidates:
            raise NoEndpointsError(f"no endpoints available for model {request.model!r}")
        if request.priority >= 0 or self._detector is None:
            return
        saturation = self._detector.saturation(candidates)
        if saturation >= 1.0:
            raise AdmissionRejected(
                429,
                f"the pool is saturated (saturation {saturation:.2f}); sheddable request "
                f"(priority {request.priority}) rejected",
            )


def admission_for(config: LoadedConfig, provider: ObjectivePriorities | None = None) -> Admission:
    """The admission of `config`: shedding by its saturation detector, or, with `flowControl`, none (saturation
    queues requests instead) and the flow-control objectives over the admission ones."""
    spec, flow_control = config.admission, config.document.flow_control
    if flow_control is None:
        return Admission(config.saturation_detector, spec.objectives, spec.default_priority, provider)
    objectives = {**spec.objectives, **flow_control.objectives}
    return Admission(None, objectives, spec.default_priority, provider)
