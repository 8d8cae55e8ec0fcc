from __future__ import annotations

import pytest
import yaml

from kvroute.operator.render import CONFIG_KEY, RenderedConfig, default_sections, render_config, render_profile
from kvroute.router.config.builder import Registry
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config

from .conftest import profile_spec


def test_default_config_is_the_routers_built_in_document(registry: Registry) -> None:
    rendered = render_config(default_sections(), registry, pool="llama")
    document = yaml.safe_load(rendered.text)
    assert document == yaml.safe_load(DEFAULT_CONFIG_TEXT)
    assert rendered.text.startswith("# Rendered by kvroute-operator for InferencePool llama from the built-in default")
    assert CONFIG_KEY == "config.yaml"


def test_profile_renders_its_sections_verbatim(registry: Registry) -> None:
    spec = profile_spec(metrics={"scrapeInterval": "100ms", "engine": "sglang"}, router={"replicas": 2})
    parsed, rendered = render_profile(spec, registry, pool="llama", profile="fast")
    document = yaml.safe_load(rendered.text)
    assert document["apiVersion"] == "kvroute.io/v1alpha1"
    assert document["kind"] == "EndpointPickerConfig"
    assert document["plugins"] == spec["plugins"]
    assert document["schedulingProfiles"] == spec["schedulingProfiles"]
    assert document["metrics"] == {"scrapeInterval": "100ms", "engine": "sglang"}  # a duration stays a string
    assert "router" not in document and "poolRef" not in document
    assert parsed.router.replicas == 2
    assert "from SchedulingProfile fast" in rendered.text.splitlines()[0]
    loaded = load_config(rendered.text, registry)  # what the router will do with the ConfigMap
    assert loaded.profiles["default"].scorers[0][1] == 3.0


def test_rendering_is_deterministic_whatever_the_key_order(registry: Registry) -> None:
    spec = profile_spec()
    shuffled = {key: spec[key] for key in reversed(list(spec))}
    shuffled["plugins"] = [dict(reversed(list(p.items()))) for p in spec["plugins"]]
    a = render_profile(spec, registry, pool="llama", profile="fast")[1]
    b = render_profile(shuffled, registry, pool="llama", profile="fast")[1]
    assert a == b
    assert len(a.hash) == 16
    assert a.hash != render_profile(spec, registry, pool="llama", profile="other")[1].hash


def test_invalid_plugin_parameters_are_reported_with_their_path(registry: Registry) -> None:
    spec = profile_spec()
    spec["plugins"][0]["parameters"] = {"blockSizeTokens": "many"}
    with pytest.raises(ConfigError) as caught:
        render_profile(spec, registry, pool="llama", profile="fast")
    [message] = caught.value.errors
    assert message.startswith("spec.plugins[0].parameters.blockSizeTokens: ")


def test_unknown_plugin_type_and_reference(registry: Registry) -> None:
    spec = profile_spec()
    spec["plugins"].append({"type": "telepathy-scorer"})
    with pytest.raises(ConfigError) as caught:
        render_profile(spec, registry, pool="llama", profile="fast")
    assert caught.value.errors == ('spec.plugins[3].type: unknown plugin type "telepathy-scorer"',)

    spec = profile_spec()
    spec["schedulingProfiles"][0]["plugins"][1]["pluginRef"] = "foo"
    with pytest.raises(ConfigError) as caught:
        render_profile(spec, registry, pool="llama", profile="fast")
    assert caught.value.errors == ('spec.schedulingProfiles[0].plugins[1].pluginRef: unknown plugin "foo"',)


def test_invalid_shape_is_reported_against_the_profile(registry: Registry) -> None:
    with pytest.raises(ConfigError) as caught:
        render_profile({"poolRef": {}, "router": {"mode": "carrier-pigeon"}}, registry, pool="llama", profile="x")
    assert caught.value.errors == (
        "spec.poolRef.name: Field required",
        "spec.router.mode: Input should be 'ext-proc' or 'proxy'",
    )


def test_rendered_config_hash_is_of_the_text() -> None:
    assert RenderedConfig.of("a") != RenderedConfig.of("b")
    assert RenderedConfig.of("a").hash == "ca978112ca1bbdca"
