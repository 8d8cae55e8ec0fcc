"""Configurations written for llm-d (2026) load unchanged where kvroute has the semantics, and fail naming the
type, the path and what to use instead where it has not."""

from __future__ import annotations

import pytest

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config
from kvroute.router.plugins.filters.role import DecodeFilter, PrefillFilter
from kvroute.router.plugins.handlers.pd import PDProfileHandler
from kvroute.router.plugins.producers.approx_prefix_cache import ApproxPrefixCacheProducer
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer
from kvroute.router.plugins.scorers.queue import QueueScorer

# llm-d-router deploy/config/pd-epp-config.yaml, with the headers hook older guides add and the metrics plugins of
# llm-d's defaults.
PD_DOCUMENT = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
- type: core-metrics-extractor
- type: approx-prefix-cache-producer
  parameters:
    maxPrefixTokensToMatch: 4096
    lruCapacityPerServer: 31250
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-headers-handler
- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: prefix-based-pd-decider
- type: prefix-based-pd-decider
  parameters:
    nonCachedTokens: 16
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
"""


def test_the_pd_document_builds_kvroutes_pd_handler_with_the_deciders_threshold() -> None:
    config = load_config(PD_DOCUMENT, REGISTRY)
    handler = config.handler
    assert isinstance(handler, PDProfileHandler)
    assert handler.name == "disagg-profile-handler"
    params = handler.params
    assert (params.threshold, params.decode_profile, params.prefill_profile) == (16, "decode", "prefill")  # type: ignore[attr-defined]
    assert params.prefix_plugin_name == "approx-prefix-cache-producer"  # type: ignore[attr-defined]
    assert [type(p) for p in config.scheduler.producers] == [ApproxPrefixCacheProducer]
    for name, role_filter in (("prefill", PrefillFilter), ("decode", DecodeFilter)):
        profile = config.profiles[name]
        assert [type(f) for f in profile.filters] == [role_filter]
        assert [(type(s), w) for s, w in profile.scorers] == [(PrefixCacheScorer, 2.0), (QueueScorer, 1.0)]
        assert profile.picker.type_name == "max-score-picker"
    # the deciders, the headers hook and the metrics plugins build nothing
    assert set(config.plugins) == {
        "approx-prefix-cache-producer",
        "prefix-cache-scorer",
        "queue-scorer",
        "prefill-filter",
        "decode-filter",
        "max-score-picker",
        "disagg-profile-handler",
        "utilization-detector",
    }


def with_handler(parameters: str, decider: str = "prefix-based-pd-decider", decider_parameters: str = "") -> str:
    return f"""\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: decode-filter
- type: prefill-filter
- type: {decider}
  name: decider
{decider_parameters}
- type: disagg-profile-handler
  parameters: {parameters}
schedulingProfiles:
- name: decode
  plugins: [{{pluginRef: decode-filter}}]
- name: prefill
  plugins: [{{pluginRef: prefill-filter}}]
"""


def test_the_flat_format_and_the_always_decider_map_too() -> None:
    text = with_handler(
        "{decodeProfile: decode, prefillProfile: prefill, prefillDeciderPluginName: decider}",
        decider="always-disagg-pd-decider",
    )
    params = load_config(text, REGISTRY).handler.params
    assert (params.threshold, params.prefix_plugin_name) == (0, "prefix-cache-scorer")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("parameters", "decider_parameters", "message"),
    [
        (
            "{deciders: {prefill: decider}}",
            "  parameters: {nonCachedTokens: 0}",
            "plugins[3].parameters.deciders.prefill: plugins[2].parameters.nonCachedTokens: 0 turns disaggregation "
            "off in llm-d; use single-profile-handler with the decode profile, or set a threshold",
        ),
        (
            "{}",
            "",
            "plugins[3].parameters.deciders.prefill: without a prefill decider llm-d never disaggregates; "
            "use single-profile-handler with the decode profile",
        ),
        (
            "{deciders: {prefill: decider, encode: decider}}",
            "",
            "plugins[3].parameters.deciders.encode: kvroute has no encode stage (E/P/D); remove it",
        ),
        (
            "{deciders: {prefill: nowhere}}",
            "",
            'plugins[3].parameters.deciders.prefill: unknown plugin "nowhere"',
        ),
        (
            "{decodeProfile: d, deciders: {prefill: decider}}",
            "",
            "plugins[3].parameters.decodeProfile: cannot mix the flat parameters with profiles/deciders; "
            "use one format",
        ),
    ],
)
def test_what_does_not_map_is_an_error_naming_the_path(parameters: str, decider_parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(with_handler(parameters, decider_parameters=decider_parameters), REGISTRY)
    assert error.value.errors == (message,)


def test_types_without_kvroute_semantics_name_the_type_the_path_and_the_alternative() -> None:
    text = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: session-affinity-filter
- type: latency-scorer
"""
    with pytest.raises(ConfigError) as error:
        load_config(text, REGISTRY)
    assert error.value.errors == (
        'plugins[1].type: llm-d plugin type "session-affinity-filter" has no kvroute equivalent; '
        "use session-affinity-scorer (header x-session-token) with a high weight",
        'plugins[2].type: llm-d plugin type "latency-scorer" has no kvroute equivalent; '
        "use predicted-latency-scorer (docs/predicted-latency.md)",
    )


def test_a_profile_cannot_refer_to_a_plugin_that_builds_nothing() -> None:
    text = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefill-header-handler
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: prefill-header-handler}]
"""
    with pytest.raises(ConfigError) as error:
        load_config(text, REGISTRY)
    assert error.value.errors == (
        'schedulingProfiles[0].plugins[1].pluginRef: plugin "prefill-header-handler" (prefill-header-handler) builds '
        "nothing here, its job is done by pd-profile-handler (it sets x-prefiller-host-port itself); a profile "
        "cannot refer to it",
    )


def test_an_alias_name_is_taken_like_any_other() -> None:
    text = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-header-handler
  name: x
- type: queue-scorer
  name: x
"""
    with pytest.raises(ConfigError, match=r'plugins\[1\]\.name: duplicate plugin name "x"'):
        load_config(text, REGISTRY)
