from __future__ import annotations

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.plugins.registry import REGISTRY


def test_the_recommended_configuration_loads_with_its_documented_weights() -> None:
    config = load_config(recommended_config_text(), REGISTRY)
    weights = {scorer.type_name: weight for scorer, weight in config.profiles["default"].scorers}
    assert weights == {"predicted-latency-scorer": 1, "no-hit-lru-scorer": 0.1, "lora-affinity-scorer": 0.5}
    latency = config.plugins["predicted-latency-scorer"].params
    assert (latency.capacity_charge, latency.arrival_charge, latency.kv_wait_charge) == (0.5, 0.5, 1)  # type: ignore[attr-defined]
    assert latency.prefix_plugin_name == "approx-prefix-cache-producer"  # type: ignore[attr-defined]
    assert config.plugins["approx-prefix-cache-producer"].params.max_prefix_blocks_to_match == 1024  # type: ignore[attr-defined]
    assert recommended_config_text() != DEFAULT_CONFIG_TEXT  # the built-in default stays GIE's


def test_the_pd_variant_decides_by_predicted_latency_where_and_whether_to_prefill() -> None:
    config = load_config(recommended_config_text(disaggregated=True), REGISTRY)
    assert set(config.profiles) == {"decode", "prefill"}
    assert config.handler.type_name == "pd-profile-handler"
    assert config.handler.params.decider == "predicted-latency"  # type: ignore[attr-defined]
    decode = {scorer.name for scorer, _ in config.profiles["decode"].scorers}
    prefill = {scorer.name for scorer, _ in config.profiles["prefill"].scorers}
    assert "decode-latency" in decode and "prefill-latency" in prefill
    assert config.plugins["decode-latency"].params.remote_prefill  # type: ignore[attr-defined]
    assert config.plugins["prefill-latency"].params.profile_name == "prefill"  # type: ignore[attr-defined]


def test_the_recommended_pickers_keep_two_fallbacks() -> None:
    for disaggregated, picker in ((False, "max-score-picker"), (True, "decode-picker")):
        config = load_config(recommended_config_text(disaggregated=disaggregated), REGISTRY)
        assert config.plugins[picker].params.max_num_of_endpoints == 3  # type: ignore[attr-defined]
