"""The `EndpointPickerConfig` document: its pydantic models, which also generate the JSON Schema of the CRD.

Field names are camelCase in the document (`schedulingProfiles`, `pluginRef`) and snake_case in Python. Every
model rejects unknown fields. These models check the shape only; what needs the plugin registry (plugin types,
parameters, roles, references) is checked by `kvroute.router.config.builder`.

GIE / llm-d compatibility: the three upstream apiVersions are accepted. The upstream sections `featureGates`,
`dataLayer` and `parser` are accepted and ignored (their contents are not checked): kvroute's data layer is set up
by `metrics` and discovery, and its request parsing is built in, so they have nothing to configure. A warning
names them when present. `flowControl` follows GIE's field names (`maxBytes`, `maxRequests`, `defaultRequestTTL`,
`defaultPriorityBand`, `priorityBands[]`); docs/flow-control.md describes its semantics. The GIE-style saturation
thresholds (`saturationDetector.queueDepthThreshold` and friends) are mapped onto the parameters of the default
`utilization-detector`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_VERSIONS = ("kvroute.io/v1alpha1", "inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")
IGNORED_SECTIONS = ("featureGates", "dataLayer", "parser")

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
DURATION_PATTERN = rf"^(?:{_DURATION_PART})+$"
_DURATION_FULL = re.compile(DURATION_PATTERN)
_DURATION_PARTS = re.compile(_DURATION_PART)


def parse_duration(value: object) -> float:
    """A Go duration string ("50ms", "1s", "1m30s") in seconds; must be positive."""
    if isinstance(value, str) and _DURATION_FULL.match(value):
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PARTS.findall(value))
        if seconds > 0:
            return seconds
    raise PydanticCustomError(
        "duration",
        'invalid duration {value}: expected a positive duration such as "50ms", "1s" or "2m"',
        {"value": f'"{value}"' if isinstance(value, str) else repr(value)},
    )


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class PluginSpec(_Model):
    name: str | None = Field(default=None, min_length=1, description="Instance name; defaults to the type.")
    type: str = Field(min_length=1, description="Registered plugin type, e.g. queue-scorer.")
    parameters: dict[str, Any] | None = Field(default=None, description="Validated by the plugin type's Params.")

    @property
    def instance_name(self) -> str:
        return self.name or self.type


class ProfilePluginSpec(_Model):
    plugin_ref: str = Field(min_length=1, description="Name of a plugin in `plugins`.")
    weight: float | None = Field(default=None, ge=0, description="Scorers only; defaults to 1.0.")


class SchedulingProfileSpec(_Model):
    name: str = Field(min_length=1)
    plugins: list[ProfilePluginSpec] = Field(default_factory=list)


class SaturationDetectorSpec(_Model):
    plugin_ref: str | None = Field(default=None, min_length=1, description="Name of a saturation detector plugin.")
    # GIE-style thresholds: parameters of the default utilization-detector.
    queue_depth_threshold: int | None = None
    kv_cache_util_threshold: float | None = None
    metrics_staleness_threshold: str | None = None
    headroom: float | None = None

    def detector_parameters(self) -> dict[str, Any]:
        """The thresholds that were set, under their document (camelCase) names."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"plugin_ref"})


class MetricsSpec(_Model):
    scrape_interval: Duration = Field(default=0.05, json_schema_extra={"default": "50ms"})
    timeout: Duration = Field(default=1.0, json_schema_extra={"default": "1s"}, description="Per scrape.")
    staleness_threshold: Duration = Field(
        default=2.0,
        json_schema_extra={"default": "2s"},
        description="Metrics older than this mark the endpoint stale.",
    )
    engine: Literal["vllm", "sglang", "trtllm"] = Field(default="vllm", description="Metric names to scrape.")


class AdmissionSpec(_Model):
    objectives: dict[str, int] = Field(
        default_factory=dict, description="Priority per inference objective (x-gateway-inference-objective)."
    )
    default_priority: int = Field(default=0, description="Priority of requests naming no known objective.")


_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_QUANTITY_FACTORS = {
    None: 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def parse_quantity(value: object) -> int:
    """A non-negative integer, or a Kubernetes quantity string ("500M", "1Gi") as an integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _QUANTITY.match(value.strip())):
        return int(match.group(1)) * _QUANTITY_FACTORS[match.group(2)]
    raise PydanticCustomError(
        "quantity",
        'invalid quantity {value}: expected a non-negative integer or a quantity such as "500M" or "1Gi"',
        {"value": f'"{value}"' if isinstance(value, str) else repr(value)},
    )


Quantity = Annotated[
    int,
    BeforeValidator(parse_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]

DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # GIE's per-band default


class PriorityBandSpec(_Model):
    priority: int = Field(description="Requests of this priority (higher is served first).")
    priority_name: str | None = Field(default=None, min_length=1, description="Label in metrics; default the number.")
    max_bytes: Quantity = Field(
        default=DEFAULT_BAND_MAX_BYTES, description="Bytes of request bodies queued in this band; 0: no limit."
    )
    max_requests: int = Field(default=0, ge=0, description="Requests queued in this band; 0: no limit.")
    fairness_policy_ref: Literal["round-robin-fairness-policy", "global-strict-fairness-policy"] = Field(
        default="round-robin-fairness-policy", description="Which flow of the band is served next."
    )
    ordering_policy_ref: Literal["fcfs-ordering-policy"] = Field(
        default="fcfs-ordering-policy", description="Which request of a flow is served next."
    )


class DefaultPriorityBandSpec(PriorityBandSpec):
    """The template of the bands of priorities `priorityBands` does not list (its `priority` is not used)."""

    priority: int = 0


class FlowControlSpec(_Model):
    max_bytes: Quantity = Field(default=0, description="Bytes of request bodies queued in all bands; 0: no limit.")
    max_requests: int = Field(default=0, ge=0, description="Requests queued in all bands; 0: no limit.")
    default_request_ttl: Duration = Field(
        default=30.0,
        alias="defaultRequestTTL",
        json_schema_extra={"default": "30s"},
        description="How long a request may wait in the queue.",
    )
    default_priority_band: DefaultPriorityBandSpec = Field(default_factory=DefaultPriorityBandSpec)
    priority_bands: list[PriorityBandSpec] = Field(default_factory=list)
    objectives: dict[str, int] = Field(
        default_factory=dict, description="Priority per inference objective, over `admission.objectives`."
    )
    usage_limit_policy_plugin_ref: str | None = Field(
        default=None,
        min_length=1,
        description="A usage-limit policy plugin: the saturation ceiling of each band (default: 1.0 for all).",
    )

    @field_validator("priority_bands")
    @classmethod
    def _unique_priorities(cls, bands: list[PriorityBandSpec]) -> list[PriorityBandSpec]:
        seen: dict[int, int] = {}
        for index, band in enumerate(bands):
            if band.priority in seen:
                raise PydanticCustomError(
                    "duplicate_priority",
                    "priority {priority} is listed twice (bands {first} and {index})",
                    {"index": index, "priority": band.priority, "first": seen[band.priority]},
                )
            seen[band.priority] = index
        names = [band.priority_name for band in bands if band.priority_name is not None]
        if len(names) != len(set(names)):
            raise PydanticCustomError("duplicate_name", "priorityName must be unique across priorityBands", {})
        return bands

    def band(self, priority: int) -> PriorityBandSpec:
        """The configuration of the band of `priority`: the listed one, else the default template."""
        for band in self.priority_bands:
            if band.priority == priority:
                return band
        return self.default_priority_band


class EndpointPickerConfig(_Model):
    api_version: Literal["kvroute.io/v1alpha1", "inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    plugins: list[PluginSpec] = Field(default_factory=list)
    scheduling_profiles: list[SchedulingProfileSpec] = Field(default_factory=list)
    saturation_detector: SaturationDetectorSpec = Field(default_factory=SaturationDetectorSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    admission: AdmissionSpec = Field(default_factory=AdmissionSpec)
    flow_control: FlowControlSpec | None = Field(
        default=None, description="Queue requests in the router while the pool is saturated; absent: no queueing."
    )
    feature_gates: list[str] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")
    data_layer: dict[str, Any] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")
    parser: dict[str, Any] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")

    def ignored_sections(self) -> list[str]:
        """The upstream sections present in the document, which kvroute ignores."""
        present = self.model_dump(by_alias=True, include={"feature_gates", "data_layer", "parser"}, exclude_none=True)
        return [name for name in IGNORED_SECTIONS if name in present]
