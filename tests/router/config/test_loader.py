from __future__ import annotations

import logging
import textwrap

import pytest

from kvroute.router.config import ConfigError
from kvroute.router.config.loader import load_config, parse_config
from kvroute.router.framework import Plugin

HEADER = "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n"


def document(body: str = "", header: str = HEADER) -> str:
    return header + textwrap.dedent(body)


def rejection(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def test_yaml_syntax_error_names_the_line() -> None:
    text = document("""\
        plugins:
          - type: queue-scorer
            name: q
           weight: 2
        """)

    assert (
        rejection(text) == "invalid YAML at line 6, column 4: expected <block end>, but found '<block mapping start>'"
    )


def test_repeated_key_is_an_error_not_a_silent_override() -> None:
    text = document("""\
        plugins: []
        plugins:
          - type: queue-scorer
        """)

    assert rejection(text) == 'invalid YAML at line 4, column 1: duplicate key "plugins"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the configuration document is empty"),
        ("- type: queue-scorer\n", "the configuration document is a list, not a mapping"),
    ],
)
def test_document_must_be_a_mapping(text: str, message: str) -> None:
    assert rejection(text) == message


def test_shape_errors_name_their_paths_all_at_once() -> None:
    text = document("""\
        plugins:
          - name: q
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: q
                weight: -1
        metrics:
          scrapeInterval: 50
        rateLimit: 3
        """)

    assert rejection(text).splitlines() == [
        "plugins[0].type: Field required",
        "schedulingProfiles[0].plugins[0].weight: Input should be greater than or equal to 0",
        'metrics.scrapeInterval: invalid duration 50: expected a positive duration such as "50ms", "1s" or "2m"',
        "rateLimit: Extra inputs are not permitted",
    ]


def test_unknown_api_version_and_kind_are_rejected() -> None:
    text = document(header="apiVersion: v1\nkind: ConfigMap\n")

    assert rejection(text).splitlines() == [
        "apiVersion: Input should be 'kvroute.io/v1alpha1', 'inference.networking.x-k8s.io/v1alpha1' or "
        "'llm-d.ai/v1alpha1'",
        "kind: Input should be 'EndpointPickerConfig'",
    ]


@pytest.mark.parametrize("api_version", ["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"])
def test_upstream_documents_load_and_their_extra_sections_are_ignored_with_a_warning(
    api_version: str, registry: dict[str, type[Plugin]], caplog: pytest.LogCaptureFixture
) -> None:
    text = textwrap.dedent(f"""\
        apiVersion: {api_version}
        kind: EndpointPickerConfig
        featureGates: [dataLayer]
        plugins:
          - type: queue-scorer
          - type: prefix-cache-scorer
            parameters:
              blockSizeTokens: 64
          - type: utilization-detector
            parameters:
              queueDepthThreshold: 8
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: queue-scorer
                weight: 2
              - pluginRef: prefix-cache-scorer
                weight: 3
        dataLayer:
          sources:
            - pluginRef: metrics-data-source
        parser:
          pluginRef: openai-parser
        saturationDetector:
          pluginRef: utilization-detector
        """)

    with caplog.at_level(logging.WARNING):
        config = load_config(text, registry)

    profile = config.profiles["default"]
    assert [(s.type_name, w) for s, w in profile.scorers] == [("queue-scorer", 2.0), ("prefix-cache-scorer", 3.0)]
    assert config.plugins["prefix-cache-scorer"].params.block_size_tokens == 64
    assert config.saturation_detector.params.queue_depth_threshold == 8
    assert caplog.messages == [
        "ignoring configuration sections kvroute has no use for: featureGates, dataLayer, parser"
    ]


def test_metrics_durations_use_go_syntax() -> None:
    config = parse_config(
        document("""\
            metrics:
              scrapeInterval: 100ms
              timeout: 1m30s
              stalenessThreshold: 1.5s
              engine: sglang
            """)
    )

    assert (config.metrics.scrape_interval, config.metrics.timeout, config.metrics.staleness_threshold) == (
        0.1,
        90.0,
        1.5,
    )
    assert config.metrics.engine == "sglang"


def test_metrics_and_admission_defaults() -> None:
    config = parse_config(document())

    assert config.metrics.scrape_interval == 0.05
    assert config.metrics.timeout == 1.0
    assert config.metrics.staleness_threshold == 2.0
    assert config.metrics.engine == "vllm"
    assert config.admission.objectives == {}
    assert config.admission.default_priority == 0


@pytest.mark.parametrize("value", ["0s", "5", "1d", "-1s", "ms"])
def test_invalid_durations_are_rejected(value: str) -> None:
    message = rejection(document(f"metrics:\n  timeout: '{value}'\n"))

    assert (
        message
        == f'metrics.timeout: invalid duration "{value}": expected a positive duration such as "50ms", "1s" or "2m"'
    )


def test_admission_maps_objectives_to_priorities() -> None:
    config = parse_config(
        document("""\
            admission:
              objectives:
                interactive: 10
                batch: -1
              defaultPriority: 1
            """)
    )

    assert config.admission.objectives == {"interactive": 10, "batch": -1}
    assert config.admission.default_priority == 1
