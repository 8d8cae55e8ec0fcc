"""The `EndpointPickerConfig` document: its pydantic models, which also generate the JSON Schema of the CRD.

Field names are camelCase in the document (`schedulingProfiles`, `pluginRef`) and snake_case in Python. Every
model rejects unknown fields. These models check the shape only; what needs the plugin registry (plugin types,
parameters, roles, references) is checked by `kvroute.router.config.builder`.

GIE / llm-d compatibility: the three upstream apiVersions are accepted. The upstream sections `featureGates`,
`dataLayer` and `parser` are accepted and ignored (their contents are not checked): kvroute's data layer is set up
by `metrics` and discovery, and its request parsing is built in, so they have nothing to configure. A warning
names them when present. `flowControl` is rejected, not ignored: dropping it would silently change which requests
are admitted. The GIE-style saturation thresholds (`saturationDetector.queueDepthThreshold` and friends) are mapped
onto the parameters of the default `utilization-detector`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
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


class EndpointPickerConfig(_Model):
    api_version: Literal["kvroute.io/v1alpha1", "inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    plugins: list[PluginSpec] = Field(default_factory=list)
    scheduling_profiles: list[SchedulingProfileSpec] = Field(default_factory=list)
    saturation_detector: SaturationDetectorSpec = Field(default_factory=SaturationDetectorSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    admission: AdmissionSpec = Field(default_factory=AdmissionSpec)
    feature_gates: list[str] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")
    data_layer: dict[str, Any] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")
    parser: dict[str, Any] | None = Field(default=None, description="Accepted for GIE compatibility; ignored.")

    def ignored_sections(self) -> list[str]:
        """The upstream sections present in the document, which kvroute ignores."""
        present = self.model_dump(by_alias=True, include={"feature_gates", "data_layer", "parser"}, exclude_none=True)
        return [name for name in IGNORED_SECTIONS if name in present]
