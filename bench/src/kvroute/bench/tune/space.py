"""The search space: which values of the base configuration a trial may change, and to what.

Derived from the base `EndpointPickerConfig`:

- every scorer's weight in every scheduling profile, as the dimension `PROFILE/PLUGINREF` (`default/queue-scorer`),
  log-uniform around the base weight with a share of zeros (`ranges.weight_range`); a weight of 0 keeps the
  scorer running (plugins that read its cycle state still do) but removes it from the sum;
- every parameter of `parameters.KNOWN_PARAMETERS` of every plugin whose type is listed there, as the dimension
  `PLUGIN.PARAMETER` (`token-load-scorer.queueThresholdTokens`).

A `--space` YAML file adds dimensions or replaces derived ones; with `derive: false` it is the whole space:

```yaml
derive: true                                        # default: start from the derived space
weights:
  default/prefix-cache-scorer: {low: 1, high: 8, log: true, zero: 0}
  default/lora-affinity-scorer: {choices: [3]}      # a single choice pins a value
parameters:
  token-load-scorer:                                # plugin name (defaults to its type)
    queueThresholdTokens: {low: 4096, high: 65536, log: true, integer: true}
```

Every problem is a `SpaceError` naming the file and the entry. Each dimension is checked by loading the base
configuration with the dimension at its lowest and highest value, so a range the plugin rejects fails before any
trial runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvroute.bench.tune.parameters import KNOWN_PARAMETERS
from kvroute.bench.tune.ranges import Range, weight_range
from kvroute.router.config.errors import ConfigError, validation_messages
from kvroute.router.config.loader import load_config
from kvroute.router.framework import Scorer
from kvroute.router.plugins.registry import REGISTRY

Point = dict[str, Any]  # dimension name -> value


class SpaceError(ValueError):
    """An invalid search space; the message names the file and the entry."""


@dataclass(frozen=True)
class Dimension:
    name: str  # `PROFILE/PLUGINREF` for a weight, `PLUGIN.PARAMETER` for a parameter
    kind: str  # "weight" | "parameter"
    owner: str  # the profile (weight) or the plugin instance (parameter)
    key: str  # the pluginRef (weight) or the parameter's document name
    base: Any
    range: Range


@dataclass(frozen=True)
class Space:
    document: dict[str, Any]  # the base configuration, parsed
    dimensions: tuple[Dimension, ...]

    def base_point(self) -> Point:
        return {d.name: d.base for d in self.dimensions}

    def apply(self, point: Point) -> dict[str, Any]:
        """The base document with the point's values written in (dimensions the point lacks keep the base)."""
        document = copy.deepcopy(self.document)
        plugins = {_instance(p): p for p in document.get("plugins") or []}
        profiles = {p["name"]: p for p in document.get("schedulingProfiles") or []}
        for dim in self.dimensions:
            if dim.name not in point:
                continue
            value = point[dim.name]
            if dim.kind == "weight":
                for ref in profiles[dim.owner].get("plugins") or []:
                    if ref["pluginRef"] == dim.key:
                        ref["weight"] = value
            else:
                plugin = plugins[dim.owner]
                plugin["parameters"] = {**(plugin.get("parameters") or {}), dim.key: value}
        return document

    def describe(self) -> list[dict[str, Any]]:
        """The dimensions as plain data (the journal's fingerprint and the report)."""
        return [{"name": d.name, "base": d.base, "range": _describe(d.range)} for d in self.dimensions]


def _describe(found: Range) -> dict[str, Any]:
    if found.choices:
        return {"choices": list(found.choices)}
    flags = {"log": found.log, "integer": found.integer, "zero": round(found.zero, 4)}
    return {"low": found.low, "high": found.high, **{k: v for k, v in flags.items() if v}}


def _instance(plugin: dict[str, Any]) -> str:
    return str(plugin.get("name") or plugin["type"])


def _parameter_default(plugin_type: str, key: str) -> Any:
    for name, field in REGISTRY[plugin_type].Params.model_fields.items():
        if key in (name, field.alias):
            return field.default
    return None


def derive(document: dict[str, Any]) -> list[Dimension]:
    """The default dimensions of a base document (see the module docstring)."""
    plugins = {_instance(p): p for p in document.get("plugins") or []}
    dims: list[Dimension] = []
    for profile in document.get("schedulingProfiles") or []:
        for ref in profile.get("plugins") or []:
            plugin = plugins.get(ref["pluginRef"])
            cls = REGISTRY.get(plugin["type"]) if plugin else None
            if cls is None or not issubclass(cls, Scorer):
                continue
            weight = float(ref.get("weight", 1.0))
            name = f"{profile['name']}/{ref['pluginRef']}"
            dims.append(Dimension(name, "weight", profile["name"], ref["pluginRef"], weight, weight_range(weight)))
    for instance, plugin in plugins.items():
        for key, known in KNOWN_PARAMETERS.get(plugin["type"], {}).items():
            base = (plugin.get("parameters") or {}).get(key, _parameter_default(plugin["type"], key))
            dims.append(Dimension(f"{instance}.{key}", "parameter", instance, key, base, known.including(base)))
    return dims


class _RangeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    zero: float = Field(default=0.0, ge=0, lt=1)
    choices: list[Any] | None = Field(default=None, min_length=1)

    def to_range(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return Range(choices=tuple(self.choices))
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or choices)")
        return Range(self.low, self.high, self.log, self.integer, self.zero)


class _SpaceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    derive: bool = True
    weights: dict[str, _RangeSpec] = Field(default_factory=dict)
    parameters: dict[str, dict[str, _RangeSpec]] = Field(default_factory=dict)


def _listed(spec: _SpaceSpec, document: dict[str, Any], source: str) -> list[Dimension]:
    plugins = {_instance(p): p for p in document.get("plugins") or []}
    profiles = {p["name"]: p for p in document.get("schedulingProfiles") or []}
    dims: list[Dimension] = []
    for name, range_spec in spec.weights.items():
        where = f"{source}: weights.{name}"
        profile_name, slash, ref_name = name.partition("/")
        if not slash:
            raise SpaceError(f"{where}: a weight is named PROFILE/PLUGINREF, e.g. default/queue-scorer")
        if profile_name not in profiles:
            raise SpaceError(f"{where}: no scheduling profile {profile_name!r} in the base configuration")
        refs = {r["pluginRef"]: r for r in profiles[profile_name].get("plugins") or []}
        if ref_name not in refs:
            raise SpaceError(f"{where}: profile {profile_name!r} has no pluginRef {ref_name!r}")
        base = float(refs[ref_name].get("weight", 1.0))
        dims.append(Dimension(name, "weight", profile_name, ref_name, base, _to_range(range_spec, where)))
    for instance, params in spec.parameters.items():
        if instance not in plugins:
            raise SpaceError(f"{source}: parameters.{instance}: no plugin named {instance!r} in the base configuration")
        for key, range_spec in params.items():
            where = f"{source}: parameters.{instance}.{key}"
            base = (plugins[instance].get("parameters") or {}).get(
                key, _parameter_default(plugins[instance]["type"], key)
            )
            dims.append(Dimension(f"{instance}.{key}", "parameter", instance, key, base, _to_range(range_spec, where)))
    return dims


def _to_range(spec: _RangeSpec, where: str) -> Range:
    try:
        found = spec.to_range()
    except ValueError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    problem = found.check()
    if problem:
        raise SpaceError(f"{where}: {problem}")
    return found


def _check(space: Space, source: str) -> None:
    for dim in space.dimensions:
        values = dim.range.choices or (dim.range.low, dim.range.high)
        for extreme in values:
            value = int(extreme) if dim.range.integer else extreme
            try:
                load_config(yaml.safe_dump(space.apply({dim.name: value})), REGISTRY)
            except ConfigError as exc:
                raise SpaceError(f"{source}: {dim.name}: the value {value!r} is rejected: {exc}") from None


def build_space(base_text: str, space_text: str | None = None, space_source: str = "<space>") -> Space:
    """The search space over `base_text`: derived, then amended by a `--space` document."""
    try:
        load_config(base_text, REGISTRY)
    except ConfigError as exc:
        raise SpaceError(f"base configuration: {exc}") from None
    document: dict[str, Any] = yaml.safe_load(base_text)
    spec = _SpaceSpec()
    if space_text is not None:
        try:
            data = yaml.safe_load(space_text)
        except yaml.YAMLError as exc:
            raise SpaceError(f"{space_source}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SpaceError(f"{space_source}: a search space is a mapping, not {type(data).__name__}")
        try:
            spec = _SpaceSpec.model_validate(data)
        except ValidationError as exc:
            raise SpaceError("\n".join(f"{space_source}: {m}" for m in validation_messages(exc))) from None
    dims = {d.name: d for d in derive(document)} if spec.derive else {}
    dims.update({d.name: d for d in _listed(spec, document, space_source)})
    if not dims:
        raise SpaceError(f"{space_source}: the search space is empty")
    space = Space(document, tuple(dims.values()))
    _check(space, space_source)
    return space


def load_space(base_text: str, path: Path | None) -> Space:
    if path is None:
        return build_space(base_text)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read: {exc.strerror}") from None
    return build_space(base_text, text, str(path))
