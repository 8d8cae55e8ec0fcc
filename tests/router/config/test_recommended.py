from __future__ import annotations

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.plugins.registry import REGISTRY


def test_the_recommended_configuration_loads_with_its_documented_weights() -> None:
    config = load_config(recommended_config_text(), REGISTRY)
    weights = {scorer.type_name: weight for scorer, weight in config.profiles["default"].scorers}
    assert weights == {
        "prefix-cache-scorer": 3,
        "no-hit-lru-scorer": 2,
        "lora-affinity-scorer": 3,
        "token-load-scorer": 2,
        "active-blocks-scorer": 1,
        "queue-scorer": 1,
        "kv-cache-utilization-scorer": 1,
    }
    assert config.plugins["token-load-scorer"].params.queue_threshold_tokens == 16384  # type: ignore[attr-defined]
    assert recommended_config_text() != DEFAULT_CONFIG_TEXT  # the built-in default stays GIE's


def test_the_pd_variant_disaggregates_every_request() -> None:
    config = load_config(recommended_config_text(disaggregated=True), REGISTRY)
    assert set(config.profiles) == {"decode", "prefill"}
    assert config.handler.type_name == "pd-profile-handler"
    assert config.handler.params.threshold == 0  # type: ignore[attr-defined]
    decode = {scorer.type_name for scorer, _ in config.profiles["decode"].scorers}
    assert "prefix-cache-scorer" not in decode and "token-load-scorer" in decode


def test_the_recommended_pickers_keep_two_fallbacks() -> None:
    for disaggregated, picker in ((False, "max-score-picker"), (True, "decode-picker")):
        config = load_config(recommended_config_text(disaggregated=disaggregated), REGISTRY)
        assert config.plugins[picker].params.max_num_of_endpoints == 3  # type: ignore[attr-defined]
