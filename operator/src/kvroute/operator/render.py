"""A pool's router configuration: a jinja2 template rendered to YAML, then validated exactly as the router loads it.

The document is validated by the router's own loader (`kvroute.router.config.loader.load_config`) against the
router's plugin registry (see `registry`), so `Accepted=True` means the router will load the ConfigMap: plugin
types, parameters, roles and references included. Errors carry the path of the offending field in the
SchedulingProfile (`spec.schedulingProfiles[0].plugins[2].pluginRef: unknown plugin "foo"`).

Values are dumped with sorted keys, so the same spec always renders the same text and the same hash, whatever
order the API server returns the keys in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml
from pydantic import ValidationError

from kvroute.operator.models import CONFIG_SECTIONS, ProfileResourceSpec, config_sections
from kvroute.router.config.builder import Registry
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.errors import ConfigError, validation_messages
from kvroute.router.config.loader import load_config

CONFIG_KEY = "config.yaml"  # the ConfigMap key the router reads
DEFAULT_SOURCE = "the built-in default configuration"


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("kvroute.operator", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # YAML, not HTML
    keep_trailing_newline=True,
)
_ENV.filters["yaml"] = _to_yaml


@dataclass(frozen=True)
class RenderedConfig:
    text: str
    hash: str  # 16 hex digits of the text's SHA-256

    @classmethod
    def of(cls, text: str) -> RenderedConfig:
        return cls(text, hashlib.sha256(text.encode()).hexdigest()[:16])


def default_sections() -> dict[str, Any]:
    """The router's built-in default document, as sections (one default, defined by the router)."""
    return config_sections(yaml.safe_load(DEFAULT_CONFIG_TEXT))


def render_config(
    sections: Mapping[str, Any], registry: Registry, *, pool: str, source: str = DEFAULT_SOURCE
) -> RenderedConfig:
    """Renders and validates a document; raises `ConfigError` with document paths (`plugins[0].type: ...`)."""
    ordered = {key: sections[key] for key in CONFIG_SECTIONS if key in sections}
    text = _ENV.get_template("config.yaml.j2").render(pool=pool, source=source, sections=ordered)
    load_config(text, registry)
    return RenderedConfig.of(text)


def render_profile(
    spec: Mapping[str, Any], registry: Registry, *, pool: str, profile: str
) -> tuple[ProfileResourceSpec, RenderedConfig]:
    """Validates a SchedulingProfile's spec and renders its configuration; raises `ConfigError` whose messages
    start with the path in the SchedulingProfile (`spec.plugins[1].parameters.threshold: ...`)."""
    try:
        parsed = ProfileResourceSpec.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc, ("spec",))) from None
    try:
        rendered = render_config(config_sections(spec), registry, pool=pool, source=f"SchedulingProfile {profile}")
    except ConfigError as exc:
        raise ConfigError([f"spec.{message}" for message in exc.errors]) from None
    return parsed, rendered
