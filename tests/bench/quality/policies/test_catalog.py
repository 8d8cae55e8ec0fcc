from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.generators import Workload
from kvroute.bench.quality.policies.base import Disaggregated
from kvroute.bench.quality.policies.catalog import POLICIES, lookup, select
from kvroute.bench.quality.policies.configs import GIE_DEFAULT, LLMD_OPTIMIZED, ROUND_ROBIN, gie_default_document
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.plugins.registry import REGISTRY
from kvroute.simulator.des.harness import simulate

ORDER = [
    "random",
    "round-robin",
    "least-queue",
    "gie-default",
    "llmd-blend",
    "llmd-precise",
    "llmd-optimized",
    "sglang-cache-aware",
    "dynamo",
    "oracle",
    "kvroute",
    "kvroute-precise",
]


def test_all_policies_in_report_order_and_lookup_by_name_or_file(tmp_path: Path) -> None:
    assert [info.name for info in select("all")] == ORDER
    config = tmp_path / "mine.yaml"
    config.write_text(ROUND_ROBIN.document(disaggregated=False))
    chosen = select(f"dynamo, {config}")
    assert [info.name for info in chosen] == ["dynamo", "mine"]
    assert lookup(chosen[1].key).name == "mine"
    with pytest.raises(ValueError, match="unknown policy 'dynamo2'"):
        select("dynamo2")
    with pytest.raises(ValueError, match="cannot read"):
        select(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="selected twice: dynamo"):
        select("dynamo,dynamo")


def test_gie_default_is_the_routers_built_in_document() -> None:
    assert gie_default_document(disaggregated=False) == DEFAULT_CONFIG_TEXT
    built = load_config(GIE_DEFAULT.document(disaggregated=False), REGISTRY)
    weights = {scorer.type_name: weight for scorer, weight in built.profiles["default"].scorers}
    assert weights == {"prefix-cache-scorer": 3, "queue-scorer": 2, "kv-cache-utilization-scorer": 2}


def test_a_recipe_on_a_pd_fleet_disaggregates_with_a_picker_per_profile() -> None:
    built = load_config(ROUND_ROBIN.document(disaggregated=True), REGISTRY)
    assert set(built.profiles) == {"decode", "prefill"}
    assert built.profiles["decode"].picker is not built.profiles["prefill"].picker
    assert [f.type_name for f in built.profiles["prefill"].filters] == ["prefill-filter"]


def test_llmd_optimized_is_the_optimized_baseline_on_both_fleet_shapes() -> None:
    built = load_config(LLMD_OPTIMIZED.document(disaggregated=False), REGISTRY)
    assert [p.type_name for p in built.scheduler.producers] == [
        "inflight-load-producer",
        "approx-prefix-cache-producer",
    ]
    profile = built.profiles["default"]
    assert [f.type_name for f in profile.filters] == ["prefix-cache-affinity-filter"]
    assert [(s.type_name, w) for s, w in profile.scorers] == [("token-load-scorer", 1.0)]
    assert profile.picker.type_name == "max-score-picker"
    gate = profile.filters[0].params.model_dump(by_alias=True)
    assert {k: gate[k] for k in ("affinityThreshold", "maxTokensInFlightPenalty", "maxTTFTPenaltyMs")} == {
        "affinityThreshold": 0.8,
        "maxTokensInFlightPenalty": 286_720,
        "maxTTFTPenaltyMs": 0,
    }
    pd = load_config(LLMD_OPTIMIZED.document(disaggregated=True), REGISTRY)
    for role in ("decode", "prefill"):
        filters = [f.type_name for f in pd.profiles[role].filters]
        assert filters == [f"{role}-filter", "prefix-cache-affinity-filter"]


@pytest.mark.parametrize("name", ORDER)
def test_every_policy_serves_every_request_of_an_aggregated_and_a_pd_fleet(
    name: str, tiny: Workload, tiny_pd: Workload
) -> None:
    for workload in (tiny, tiny_pd):
        policy = POLICIES[name].make(workload.fleet, 7)
        result = simulate(
            workload.fleet.profiles,
            workload.requests,
            policy.route,
            listener=policy,
            tick_interval=policy.tick_interval,
        )
        assert result.unfinished == 0
        if workload is tiny_pd:
            assert isinstance(policy, Disaggregated | SchedulerPolicy)
            assert all(r.engine in (2, 3) for r in result.records)
            if name.startswith("kvroute"):  # decides per request by predicted latency whether to prefill apart
                assert all(r.prefill_engine in (0, 1, None) for r in result.records)
                assert any(r.prefill_engine is not None for r in result.records)
            else:
                assert all(r.prefill_engine in (0, 1) for r in result.records)
