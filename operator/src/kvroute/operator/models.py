"""The objects the operator reads: a SchedulingProfile's spec (the CRD's schema is generated from it) and the part
of an InferencePool's spec it uses.

A SchedulingProfile's configuration sections are the router's own models (`kvroute.router.config`), so the CRD,
the operator and the router agree on one definition. The CEL rules below run in the API server at `kubectl apply`;
they check the references the document's shape allows (a `pluginRef` names a declared plugin, names are unique).
What needs the plugin registry (types, parameters, roles) is checked by the operator (see `render`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic.alias_generators import to_camel

from kvroute.router.config import (
    AdmissionSpec,
    MetricsSpec,
    PluginSpec,
    SaturationDetectorSpec,
)
from kvroute.router.config import SchedulingProfileSpec as ConfigProfileSpec

# CEL helper: a plugin's instance name, which defaults to its type.
_NAME = "(has({0}.name) ? {0}.name : {0}.type)"

SPEC_VALIDATIONS: list[JsonValue] = [
    {
        "rule": f"!has(self.plugins) || self.plugins.all(p, self.plugins.exists_one(q, {_NAME.format('q')} == "
        f"{_NAME.format('p')}))",
        "message": "plugin names must be unique (a plugin's name defaults to its type)",
        "fieldPath": ".plugins",
        "reason": "FieldValueDuplicate",
    },
    {
        "rule": "!has(self.schedulingProfiles) || self.schedulingProfiles.all(p, !has(p.plugins) || "
        f"p.plugins.all(r, has(self.plugins) && self.plugins.exists(q, {_NAME.format('q')} == r.pluginRef)))",
        "message": "every schedulingProfiles[].plugins[].pluginRef must name a plugin of spec.plugins "
        "(a plugin's name defaults to its type)",
        "fieldPath": ".schedulingProfiles",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.schedulingProfiles) || "
        "self.schedulingProfiles.all(p, self.schedulingProfiles.exists_one(q, q.name == p.name))",
        "message": "scheduling profile names must be unique",
        "fieldPath": ".schedulingProfiles",
        "reason": "FieldValueDuplicate",
    },
    {
        "rule": "!has(self.saturationDetector) || !has(self.saturationDetector.pluginRef) || "
        f"(has(self.plugins) && self.plugins.exists(q, {_NAME.format('q')} == self.saturationDetector.pluginRef))",
        "message": "saturationDetector.pluginRef must name a plugin of spec.plugins",
        "fieldPath": ".saturationDetector.pluginRef",
        "reason": "FieldValueInvalid",
    },
]

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
            r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class PoolRef(_Model):
    name: str = Field(min_length=1, max_length=253, description="An InferencePool in the profile's namespace.")


class ResourceRequirements(_Model):
    requests: dict[str, Quantity] | None = Field(default=None, max_length=8, description="e.g. cpu: 500m")
    limits: dict[str, Quantity] | None = Field(default=None, max_length=8, description="e.g. memory: 1Gi")


LogLevel = Literal["debug", "info", "warning", "error"]
RouterMode = Literal["ext-proc", "proxy"]


class RouterSpec(_Model):
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Router pods; unset leaves the Deployment's replicas alone (1 when created, or an autoscaler's).",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Container resources; unset: requests cpu 500m, memory 256Mi; limits memory 1Gi."
    )
    log_level: LogLevel = Field(default="info", description="Router log level.")
    mode: RouterMode = Field(
        default="ext-proc",
        description="ext-proc: Envoy ext_proc endpoint picker for a gateway (the Service's port goes to 9002); "
        "proxy: OpenAI-compatible reverse proxy (the Service's port goes to 8080).",
    )
    fleet_sync: bool | None = Field(
        default=None,
        description="Router replicas share their routing decisions, in-flight load and completions over port 9005, "
        "so each routes as if it saw every request. Unset: on when replicas is more than 1; set it to true when an "
        "autoscaler owns the replicas.",
    )

    @property
    def syncs_fleet(self) -> bool:
        if self.fleet_sync is not None:
            return self.fleet_sync
        return self.replicas is not None and self.replicas > 1


class ProfileResourceSpec(_Model):
    """The `spec` of a SchedulingProfile: which pool, its router configuration, and how its router runs."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_VALIDATIONS})

    pool_ref: PoolRef
    plugins: list[PluginSpec] = Field(default_factory=list, max_length=32, description="As in EndpointPickerConfig.")
    scheduling_profiles: list[ConfigProfileSpec] = Field(
        default_factory=list, max_length=8, description="As in EndpointPickerConfig."
    )
    saturation_detector: SaturationDetectorSpec | None = Field(default=None, description="As in EndpointPickerConfig.")
    metrics: MetricsSpec | None = Field(default=None, description="As in EndpointPickerConfig.")
    admission: AdmissionSpec | None = Field(default=None, description="As in EndpointPickerConfig.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The router Deployment.")


CONFIG_SECTIONS = ("plugins", "schedulingProfiles", "saturationDetector", "metrics", "admission")


def config_sections(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The EndpointPickerConfig sections a SchedulingProfile's spec sets, exactly as the user wrote them (the
    validated models normalise some values, e.g. durations to seconds, which the document does not accept)."""
    return {key: spec[key] for key in CONFIG_SECTIONS if spec.get(key) is not None}


class _PoolModel(BaseModel):
    # An upstream object: read what kvroute uses, ignore the rest.
    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel)


class PortNumber(_PoolModel):
    number: int = Field(ge=1, le=65535)


class EndpointPickerRef(_PoolModel):
    group: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1)
    port: PortNumber | None = None
    failure_mode: str | None = None

    @property
    def is_service(self) -> bool:
        return (self.group or "") == "" and (self.kind or "Service") == "Service" and self.port is not None


class PoolSelector(_PoolModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class InferencePoolSpec(_PoolModel):
    selector: PoolSelector = Field(default_factory=PoolSelector)
    target_ports: list[PortNumber] = Field(default_factory=list)
    endpoint_picker_ref: EndpointPickerRef | None = None
