from __future__ import annotations

import re

import pytest

from kvroute.router.config import ConfigError, EndpointPickerConfig
from kvroute.router.config.loader import parse_config
from kvroute.router.config.models import DURATION_PATTERN


def test_json_schema_uses_document_names_and_forbids_unknown_fields() -> None:
    schema = EndpointPickerConfig.model_json_schema()
    defs = schema["$defs"]

    assert schema["required"] == ["apiVersion", "kind"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["apiVersion"]["enum"] == [
        "kvroute.io/v1alpha1",
        "inference.networking.x-k8s.io/v1alpha1",
        "llm-d.ai/v1alpha1",
    ]
    assert set(schema["properties"]) >= {"plugins", "schedulingProfiles", "saturationDetector", "metrics", "admission"}
    assert defs["ProfilePluginSpec"]["required"] == ["pluginRef"]
    assert defs["ProfilePluginSpec"]["properties"]["weight"]["anyOf"][0] == {"minimum": 0, "type": "number"}
    assert defs["PluginSpec"]["required"] == ["type"]
    assert defs["MetricsSpec"]["properties"]["scrapeInterval"] == {
        "default": "50ms",
        "pattern": DURATION_PATTERN,
        "title": "Scrapeinterval",
        "type": "string",
    }
    assert all(d["additionalProperties"] is False for d in defs.values())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("1s", 1.0), ("2m", 120.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025)],
)
def test_go_durations_parse_to_seconds_and_match_the_schema_pattern(text: str, seconds: float) -> None:
    config = parse_config(
        f"apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\nmetrics: {{timeout: {text}}}\n"
    )

    assert config.metrics.timeout == pytest.approx(seconds)
    assert re.match(DURATION_PATTERN, text)


def test_plugin_name_defaults_to_type() -> None:
    config = parse_config(
        "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n  - type: queue-scorer\n  - type: queue-scorer\n    name: q2\n"
    )

    assert [p.instance_name for p in config.plugins] == ["queue-scorer", "q2"]


def test_empty_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.name: String should have at least 1 character"):
        parse_config("apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n  - {name: '', type: x}\n")
