from __future__ import annotations

import textwrap

import pytest

from kvroute.router.config import ConfigError
from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.loader import load_config
from kvroute.router.framework import Plugin

Registry = dict[str, type[Plugin]]


def load(body: str, registry: Registry) -> LoadedConfig:
    return load_config(
        "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n" + textwrap.dedent(body), registry
    )


def errors(body: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(body, registry)
    return list(info.value.errors)


def describe(config: LoadedConfig) -> dict[str, tuple[list[str], list[tuple[str, float]], str]]:
    """Each profile as (filter names, (scorer name, weight) pairs, picker name)."""
    return {
        name: ([f.name for f in p.filters], [(s.name, w) for s, w in p.scorers], p.picker.name)
        for name, p in config.profiles.items()
    }


# Errors, each naming its path.


def test_unknown_plugin_ref(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - type: threshold-filter
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: queue-scorer
              - pluginRef: threshold-filter
              - pluginRef: foo
        """

    assert errors(body, registry) == ['schedulingProfiles[0].plugins[2].pluginRef: unknown plugin "foo"']


def test_unknown_plugin_type(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - type: threshold-filter
          - type: max-score-picker
          - type: bar
        """

    assert errors(body, registry) == ['plugins[3].type: unknown plugin type "bar"']


def test_parameters_are_validated_by_the_plugin_params(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
            parameters:
              value: 0.3
          - type: threshold-filter
            parameters:
              threshold: 1.5
          - type: single-profile-handler
            parameters:
              verbose: true
        """

    assert errors(body, registry) == [
        "plugins[1].parameters.threshold: Input should be less than or equal to 1",
        "plugins[2].parameters.verbose: Extra inputs are not permitted",
    ]


def test_duplicate_plugin_names_counting_the_type_as_default_name(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - name: queue-scorer
            type: constant-scorer
        """

    assert errors(body, registry) == ['plugins[1].name: duplicate plugin name "queue-scorer"']


def test_plugin_constructor_failure(registry: Registry) -> None:
    assert errors("plugins:\n  - type: broken-scorer\n", registry) == [
        'plugins[0]: cannot create plugin "broken-scorer" of type "broken-scorer": no GPU in sight'
    ]


def test_more_than_one_picker_in_a_profile(registry: Registry) -> None:
    body = """\
        plugins:
          - type: max-score-picker
          - type: random-picker
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: max-score-picker
              - pluginRef: random-picker
        """

    assert errors(body, registry) == [
        'schedulingProfiles[0].plugins[1].pluginRef: more than one picker in profile "default" '
        '("max-score-picker", "random-picker")'
    ]


def test_more_than_one_picker_and_no_profiles(registry: Registry) -> None:
    body = """\
        plugins:
          - type: max-score-picker
          - type: random-picker
        """

    assert errors(body, registry) == [
        "schedulingProfiles: none listed, and the default profile would hold more than one picker "
        '("max-score-picker", "random-picker"); list the profiles'
    ]


def test_more_than_one_profile_handler(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - type: single-profile-handler
          - type: pd-profile-handler
        """

    assert errors(body, registry) == [
        'plugins[2]: more than one profile handler ("single-profile-handler", "pd-profile-handler")'
    ]


def test_several_profiles_need_a_handler(registry: Registry) -> None:
    body = """\
        schedulingProfiles:
          - name: decode
          - name: prefill
        """

    assert errors(body, registry) == ["schedulingProfiles: 2 profiles need a profile handler in plugins"]


@pytest.mark.parametrize(
    ("plugin_type", "role"),
    [("pd-profile-handler", "profile handler"), ("utilization-detector", "saturation detector")],
)
def test_profile_refers_only_to_filters_scorers_and_pickers(plugin_type: str, role: str, registry: Registry) -> None:
    body = f"""\
        plugins:
          - type: {plugin_type}
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: {plugin_type}
        """

    assert errors(body, registry) == [
        f'schedulingProfiles[0].plugins[0].pluginRef: plugin "{plugin_type}" is a {role}; '
        "a profile holds only filters, scorers and pickers"
    ]


def test_weight_on_a_non_scorer_duplicate_refs_and_duplicate_profiles(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - type: threshold-filter
          - type: pd-profile-handler
        schedulingProfiles:
          - name: decode
            plugins:
              - pluginRef: threshold-filter
                weight: 2
              - pluginRef: queue-scorer
              - pluginRef: queue-scorer
          - name: decode
        """

    assert errors(body, registry) == [
        'schedulingProfiles[0].plugins[0].weight: plugin "threshold-filter" is not a scorer; '
        "only scorers take a weight",
        'schedulingProfiles[0].plugins[2].pluginRef: plugin "queue-scorer" is already in profile "decode"',
        'schedulingProfiles[1].name: duplicate profile name "decode"',
    ]


def test_default_name_taken_by_another_type(registry: Registry) -> None:
    body = """\
        plugins:
          - type: queue-scorer
          - name: max-score-picker
            type: constant-scorer
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: queue-scorer
        """

    assert errors(body, registry) == [
        'schedulingProfiles[0]: cannot add the default "max-score-picker": the name is taken by a "constant-scorer"'
    ]


def test_default_type_missing_from_the_registry(registry: Registry) -> None:
    del registry["single-profile-handler"]

    assert errors("plugins:\n  - type: queue-scorer\n", registry) == [
        'plugins: default plugin type "single-profile-handler" is not registered'
    ]


# Defaulting.


def test_no_profiles_gives_one_default_profile_with_every_filter_scorer_and_picker(registry: Registry) -> None:
    config = load(
        """\
        plugins:
          - type: threshold-filter
          - type: queue-scorer
          - type: prefix-cache-scorer
          - type: random-picker
          - type: pd-profile-handler
          - type: utilization-detector
          - type: label-audit-hook
        """,
        registry,
    )

    assert describe(config) == {
        "default": (["threshold-filter"], [("queue-scorer", 1.0), ("prefix-cache-scorer", 1.0)], "random-picker")
    }
    assert config.handler.name == "pd-profile-handler"
    assert config.saturation_detector is config.plugins["utilization-detector"]


def test_one_profile_gets_a_single_profile_handler_picker_and_detector(registry: Registry) -> None:
    config = load(
        """\
        plugins:
          - type: queue-scorer
          - type: prefix-cache-scorer
        schedulingProfiles:
          - name: only
            plugins:
              - pluginRef: queue-scorer
              - pluginRef: prefix-cache-scorer
                weight: 3
        """,
        registry,
    )

    assert describe(config) == {"only": ([], [("queue-scorer", 1.0), ("prefix-cache-scorer", 3.0)], "max-score-picker")}
    assert list(config.plugins) == [
        "queue-scorer",
        "prefix-cache-scorer",
        "max-score-picker",
        "single-profile-handler",
        "utilization-detector",
    ]
    assert config.handler is config.plugins["single-profile-handler"]
    assert config.saturation_detector.type_name == "utilization-detector"


def test_profiles_without_picker_share_one_default_picker(registry: Registry) -> None:
    config = load(
        """\
        plugins:
          - type: pd-profile-handler
          - type: threshold-filter
        schedulingProfiles:
          - name: decode
            plugins:
              - pluginRef: threshold-filter
          - name: prefill
        """,
        registry,
    )

    assert describe(config) == {
        "decode": (["threshold-filter"], [], "max-score-picker"),
        "prefill": ([], [], "max-score-picker"),
    }
    assert config.profiles["decode"].picker is config.profiles["prefill"].picker
    assert config.handler.type_name == "pd-profile-handler"


def test_roles_come_from_the_plugin_class(registry: Registry) -> None:
    config = load(
        """\
        plugins:
          - type: label-audit-hook
          - type: queue-scorer
          - type: prefix-cache-scorer
        schedulingProfiles:
          - name: default
            plugins:
              - pluginRef: queue-scorer
        """,
        registry,
    )

    assert [p.name for p in config.pre_request] == ["label-audit-hook", "prefix-cache-scorer"]
    assert [p.name for p in config.response_hooks] == ["prefix-cache-scorer"]


# Saturation detector.


def test_detector_is_the_plugin_ref(registry: Registry) -> None:
    config = load(
        """\
        plugins:
          - type: utilization-detector
          - name: concurrency
            type: concurrency-detector
        saturationDetector:
          pluginRef: concurrency
        """,
        registry,
    )

    assert config.saturation_detector is config.plugins["concurrency"]


def test_detector_is_the_only_configured_one(registry: Registry) -> None:
    config = load("plugins:\n  - type: concurrency-detector\n", registry)

    assert config.saturation_detector is config.plugins["concurrency-detector"]
    assert "utilization-detector" not in config.plugins


def test_gie_style_thresholds_configure_the_default_detector(registry: Registry) -> None:
    config = load(
        """\
        saturationDetector:
          queueDepthThreshold: 10
          kvCacheUtilThreshold: 0.9
          metricsStalenessThreshold: 500ms
        """,
        registry,
    )

    params = config.saturation_detector.params
    assert (params.queue_depth_threshold, params.kv_cache_util_threshold, params.metrics_staleness_threshold) == (
        10,
        0.9,
        "500ms",
    )
    assert params.headroom == 0.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "saturationDetector:\n  queueDepthThreshold: 0\n",
            ["saturationDetector.queueDepthThreshold: Input should be greater than 0"],
        ),
        (
            "plugins:\n  - type: queue-scorer\nsaturationDetector:\n  pluginRef: queue-scorer\n",
            ['saturationDetector.pluginRef: plugin "queue-scorer" is not a saturation detector'],
        ),
        (
            "saturationDetector:\n  pluginRef: utilization\n",
            ['saturationDetector.pluginRef: unknown plugin "utilization"'],
        ),
        (
            "plugins:\n  - type: utilization-detector\n  - type: concurrency-detector\n",
            [
                "saturationDetector.pluginRef: required when several saturation detectors are configured "
                '("utilization-detector", "concurrency-detector")'
            ],
        ),
        (
            "plugins:\n  - type: utilization-detector\n"
            "saturationDetector:\n  pluginRef: utilization-detector\n  headroom: 0.1\n",
            [
                "saturationDetector.headroom: cannot be combined with pluginRef; "
                'set it in the parameters of plugin "utilization-detector"'
            ],
        ),
        (
            "plugins:\n  - type: concurrency-detector\nsaturationDetector:\n  queueDepthThreshold: 3\n",
            [
                "saturationDetector.queueDepthThreshold: applies only to the default utilization-detector; "
                'set it in the parameters of plugin "concurrency-detector"'
            ],
        ),
    ],
)
def test_detector_errors(body: str, expected: list[str], registry: Registry) -> None:
    assert errors(body, registry) == expected


def test_state_publishing_scorers_run_first_and_pickers_are_seeded() -> None:
    import random

    from kvroute.router.config.loader import load_config
    from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
    from kvroute.router.plugins.registry import REGISTRY

    text = """
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: no-hit-lru-scorer
- type: prefix-cache-scorer
- type: random-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: no-hit-lru-scorer}, {pluginRef: prefix-cache-scorer}, {pluginRef: random-picker}]
"""
    first = load_config(text, REGISTRY, rng=random.Random(7))
    profile = first.profiles["default"]
    assert [scorer.type_name for scorer, _ in profile.scorers] == ["prefix-cache-scorer", "no-hit-lru-scorer"]

    endpoints = [ScoredEndpoint(Endpoint.create(f"127.0.0.{i}", 8000), 0.0) for i in range(2, 10)]
    request = LLMRequest("r", "m", ApiKind.COMPLETIONS, "p", {}, {})

    def picks(seed: int) -> list[str]:
        picker = load_config(text, REGISTRY, rng=random.Random(seed)).profiles["default"].picker
        return [picker.pick(CycleState(), request, endpoints)[0].id for _ in range(20)]

    assert picks(7) == picks(7)
    assert picks(7) != picks(8)
