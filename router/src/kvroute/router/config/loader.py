"""Reading a configuration document: YAML, then the models, then the builder; every failure a `ConfigError`.

The YAML is read with the safe loader, and a key repeated in one mapping is an error (plain YAML keeps the last
one silently, which hides a second `plugins:` section). A document nested deeper than the parser's recursion
limit is rejected like any other invalid YAML.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import yaml
from pydantic import ValidationError

from kvroute.router.config.builder import LoadedConfig, Registry, build
from kvroute.router.config.errors import ConfigError, validation_messages
from kvroute.router.config.models import EndpointPickerConfig
from kvroute.router.framework import Clock
from kvroute.router.scheduling import SchedulerMetrics

log = logging.getLogger(__name__)

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f'duplicate key "{key_node.value}"',
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_config(text: str) -> EndpointPickerConfig:
    """Parses and validates the shape of a document, without the plugin registry."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError("invalid YAML: the document is nested too deeply") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"the configuration document is {kind}")
    try:
        document = EndpointPickerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc)) from None
    ignored = document.ignored_sections()
    if ignored:
        log.warning("ignoring configuration sections kvroute has no use for: %s", ", ".join(ignored))
    return document


def load_config(
    text: str,
    registry: Registry,
    *,
    previous: LoadedConfig | None = None,
    metrics: SchedulerMetrics | None = None,
    rng: random.Random | None = None,
    clock: Clock | None = None,
) -> LoadedConfig:
    """Parses, validates and builds a document. Plugins unchanged from `previous` are carried over as the same
    instances; `metrics` goes to the scheduler; `rng` seeds the pickers; `clock` is the time source of plugins
    that read the time (default `time.monotonic`). Raises `ConfigError`."""
    return build(parse_config(text), registry, previous=previous, metrics=metrics, rng=rng, clock=clock)
