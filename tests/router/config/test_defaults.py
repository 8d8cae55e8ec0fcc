from __future__ import annotations

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.framework import Plugin


def test_builtin_default_is_gie_default(registry: dict[str, type[Plugin]]) -> None:
    config = load_config(DEFAULT_CONFIG_TEXT, registry)

    (profile,) = config.profiles.values()
    assert profile.name == "default"
    assert profile.filters == ()
    assert [(s.type_name, w) for s, w in profile.scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert profile.picker.type_name == "max-score-picker"
    assert config.handler.type_name == "single-profile-handler"
    assert config.saturation_detector.type_name == "utilization-detector"
    assert [p.type_name for p in config.pre_request] == ["prefix-cache-scorer"]
    assert config.document.api_version == "kvroute.io/v1alpha1"


def test_holder_without_text_serves_the_builtin_default(registry: dict[str, type[Plugin]]) -> None:
    holder = ConfigHolder.load(registry)

    assert [(s.name, w) for s, w in holder.current.profiles["default"].scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]


def test_the_default_picker_returns_two_fallbacks() -> None:
    from kvroute.router.config.reload import ConfigHolder
    from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest
    from kvroute.router.plugins.registry import REGISTRY

    config = ConfigHolder.load(REGISTRY).current
    endpoints = [Endpoint.create(f"127.0.0.{i}", 8000) for i in range(2, 7)]
    result = config.scheduler.schedule(
        LLMRequest("r", "m", ApiKind.COMPLETIONS, "hello", {}, {}), endpoints, CycleState()
    )
    assert len(result.endpoints) == 3
    assert len({e.id for e in result.endpoints}) == 3
