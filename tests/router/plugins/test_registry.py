import random

import pytest
from pydantic import BaseModel

from kvroute.router.config.aliases import Alias, PluginRegistry, Unsupported
from kvroute.router.framework import (
    DataProducer,
    Filter,
    Picker,
    Plugin,
    ProfileHandler,
    SaturationDetector,
    Scorer,
    UsageLimitPolicy,
)
from kvroute.router.plugins.registry import REGISTRY

DESIGN_CATALOG = {
    "single-profile-handler",
    "pd-profile-handler",
    "label-selector-filter",
    "by-label",
    "by-label-selector",
    "decode-filter",
    "prefill-filter",
    "prefix-cache-scorer",
    "precise-prefix-cache-scorer",
    "no-hit-lru-scorer",
    "active-blocks-scorer",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-size-scorer",
    "load-aware-scorer",
    "active-request-scorer",
    "token-load-scorer",
    "lora-affinity-scorer",
    "session-affinity-scorer",
    "max-score-picker",
    "random-picker",
    "weighted-random-picker",
    "round-robin-picker",
    "softmax-picker",
    "utilization-detector",
    "concurrency-detector",
}
PICKERS = {"max-score-picker", "random-picker", "weighted-random-picker", "round-robin-picker", "softmax-picker"}
NEED_PARAMS = {
    "by-label": {"label": "zone"},
    "precise-prefix-cache-scorer": {"kvEvents": {"endpointPort": 5557}},
    "priority-holdback-policy": {"strategy": "stepwise-spread", "minCeiling": 0.5},
}


def test_registry_covers_the_catalog() -> None:
    assert set(REGISTRY) >= DESIGN_CATALOG


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_key_is_the_class_type_name(type_name: str) -> None:
    assert REGISTRY[type_name].type_name == type_name


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_params_forbid_unknown_keys_and_are_frozen(type_name: str) -> None:
    params = REGISTRY[type_name].Params
    assert issubclass(params, BaseModel)
    assert params.model_config.get("extra") == "forbid"
    assert params.model_config.get("frozen") is True


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_every_type_builds_from_its_config_params(type_name: str) -> None:
    cls = REGISTRY[type_name]
    plugin: Plugin = cls(type_name, cls.Params.model_validate(NEED_PARAMS.get(type_name, {})))
    assert plugin.name == type_name
    roles = ProfileHandler | DataProducer | Filter | Scorer | Picker | SaturationDetector | UsageLimitPolicy
    assert isinstance(plugin, roles)


@pytest.mark.parametrize("type_name", sorted(PICKERS))
def test_pickers_take_an_injected_random(type_name: str) -> None:
    cls = REGISTRY[type_name]
    assert issubclass(cls, Picker)
    cls(type_name, cls.Params(), rng=random.Random(0))


def test_aliases_never_shadow_a_registered_type_and_name_registered_targets() -> None:
    assert not set(REGISTRY.aliases) & set(REGISTRY.types)
    with pytest.raises(ValueError, match="both registered and aliased: queue-scorer"):
        PluginRegistry(REGISTRY.types, {"queue-scorer": Unsupported("no", "llm-d")})
    with pytest.raises(ValueError, match='alias "x" refers to the unregistered type "y"'):
        PluginRegistry(REGISTRY.types, {"x": Alias("y", "llm-d")})
