from __future__ import annotations

import textwrap

import pytest

from kvroute.router.config import ConfigError
from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.loader import load_config, parse_config
from kvroute.router.plugins.registry import REGISTRY

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def flow_control(body: str) -> str:
    return HEADER + "flowControl:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def rejection(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def test_without_flow_control_the_section_is_absent() -> None:
    assert parse_config(HEADER).flow_control is None


def test_gie_field_names_and_quantities_load() -> None:
    spec = parse_config(
        flow_control("""\
            maxBytes: 1Gi
            maxRequests: 500
            defaultRequestTTL: 1m30s
            defaultPriorityBand:
              maxRequests: 50
            priorityBands:
              - priority: 100
                priorityName: critical
                maxBytes: 10M
                fairnessPolicyRef: global-strict-fairness-policy
              - priority: -1
                maxRequests: 5
            objectives:
              chat: 100
        """)
    ).flow_control
    assert spec is not None
    assert (spec.max_bytes, spec.max_requests, spec.default_request_ttl) == (2**30, 500, 90.0)
    critical = spec.band(100)
    assert (critical.priority_name, critical.max_bytes, critical.fairness_policy_ref) == (
        "critical",
        10_000_000,
        "global-strict-fairness-policy",
    )
    assert spec.band(-1).max_requests == 5
    unlisted = spec.band(7)
    assert (unlisted.max_requests, unlisted.max_bytes, unlisted.fairness_policy_ref) == (
        50,
        1_000_000_000,
        "round-robin-fairness-policy",
    )
    assert spec.objectives == {"chat": 100}


def test_defaults_ttl_30s_and_no_global_limit() -> None:
    spec = parse_config(flow_control("{}\n")).flow_control
    assert spec is not None
    assert (spec.default_request_ttl, spec.max_requests, spec.max_bytes) == (30.0, 0, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("priorityBands:\n  - priority: 1\n  - priority: 1\n", "flowControl.priorityBands: priority 1 is listed twice"),
        ("maxBytes: lots\n", 'flowControl.maxBytes: invalid quantity "lots"'),
        ("maxRequests: -1\n", "flowControl.maxRequests: Input should be greater than or equal to 0"),
        ("defaultRequestTTL: soon\n", 'flowControl.defaultRequestTTL: invalid duration "soon"'),
        (
            "priorityBands:\n  - priority: 1\n    fairnessPolicyRef: weighted\n",
            "flowControl.priorityBands[0].fairnessPolicyRef: Input should be 'round-robin-fairness-policy' or",
        ),
        (
            "usageLimitPolicyPluginRef: ''\n",
            "flowControl.usageLimitPolicyPluginRef: String should have at least 1 character",
        ),
    ],
)
def test_invalid_flow_control_names_the_path(body: str, message: str) -> None:
    assert message in rejection(flow_control(body))


def load(text: str) -> LoadedConfig:
    return load_config(text, REGISTRY)


def test_the_usage_limit_policy_is_the_plugin_named_by_its_ref() -> None:
    config = load(
        HEADER
        + textwrap.dedent("""\
            plugins:
              - type: priority-holdback-policy
                name: holdback
                parameters: {strategy: stepwise-spread, minCeiling: 0.5}
            flowControl:
              usageLimitPolicyPluginRef: holdback
        """)
    )
    assert config.usage_limit_policy is config.plugins["holdback"]


def test_without_a_ref_no_usage_limit_policy_applies() -> None:
    assert load(flow_control("maxRequests: 5\n")).usage_limit_policy is None


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ("[]", 'flowControl.usageLimitPolicyPluginRef: unknown plugin "limits"'),
        (
            "[{type: queue-scorer, name: limits}]",
            'flowControl.usageLimitPolicyPluginRef: plugin "limits" is not a usage limit policy',
        ),
        (
            "[{type: priority-holdback-policy, name: limits, parameters: {strategy: stepwise-spread}}]",
            "minCeiling",
        ),
        (
            "[{type: priority-holdback-policy, name: limits, "
            "parameters: {strategy: stepwise-spread, minCeiling: 0.9, maxCeiling: 0.5}}]",
            "minCeiling must not be above maxCeiling",
        ),
    ],
)
def test_a_bad_usage_limit_policy_names_the_path(plugins: str, message: str) -> None:
    text = HEADER + f"plugins: {plugins}\nflowControl:\n  usageLimitPolicyPluginRef: limits\n"
    with pytest.raises(ConfigError) as info:
        load(text)
    assert message in str(info.value)
