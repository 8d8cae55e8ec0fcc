"""The overload scenario in the discrete-event harness: every mode on the same requests, a short window."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.bench.overload import des, modes
from kvroute.bench.overload.metrics import summarise
from kvroute.bench.overload.scenario import CRITICAL, STANDARD, Scenario, capacity

SCENARIO = Scenario(duration_s=8.0)


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, Any]]:
    pool = capacity(SCENARIO)
    requests = SCENARIO.requests(2.0, pool, seed=7)
    results = {}
    for mode in modes.MODES:
        config = modes.config_text(mode, SCENARIO.max_num_seqs, ttl_s=3.0, holdback=0.6)
        results[mode] = summarise(des.run(config, SCENARIO.fleet, requests, seed=7), SCENARIO.duration_s, 2.0)
    alone = SCENARIO.requests(2.0, pool, seed=7, only=CRITICAL)
    forward = modes.config_text(modes.FORWARD, SCENARIO.max_num_seqs, ttl_s=3.0)
    results["alone"] = summarise(des.run(forward, SCENARIO.fleet, alone, seed=7), SCENARIO.duration_s, 2.0)
    return results


def test_the_greedy_tenant_sends_five_times_each_other_and_the_critical_rate_is_fixed() -> None:
    rates = SCENARIO.rates(2.0, 40.0)
    assert rates["chat"] == pytest.approx(8.0)
    assert rates["greedy"] == pytest.approx(5 * rates["tenant-a"])
    assert sum(rates.values()) == pytest.approx(80.0)


def test_every_request_gets_an_answer_in_every_mode(runs: dict[str, dict[str, Any]]) -> None:
    assert {mode: run["lost"] for mode, run in runs.items()} == dict.fromkeys(runs, 0)


def test_forwarding_everything_queues_in_the_engines(runs: dict[str, dict[str, Any]]) -> None:
    forward = runs[modes.FORWARD]
    assert forward["bands"][STANDARD]["refused"] == {}
    assert forward["bands"][CRITICAL]["ttft_p90_s"] > 10 * runs["alone"]["bands"][CRITICAL]["ttft_p90_s"]


def test_shedding_refuses_only_the_sheddable_band_and_favours_the_greedy(runs: dict[str, dict[str, Any]]) -> None:
    shed = runs[modes.GIE_SHEDDING]
    assert shed["bands"][CRITICAL]["refused"] == {}
    assert set(shed["bands"][STANDARD]["refused"]) == {"429"}
    assert shed["jain_fair_share"] < 0.8


def test_flow_control_is_fair_and_the_holdback_keeps_critical_latency_near_unloaded(
    runs: dict[str, dict[str, Any]],
) -> None:
    unloaded = runs["alone"]["bands"][CRITICAL]["ttft_p90_s"]
    for mode in (modes.FLOW_CONTROL, modes.HOLDBACK):
        run = runs[mode]
        assert run["jain_fair_share"] >= 0.95, (mode, run["tenants"])
        assert run["bands"][CRITICAL]["refused"] == {}
        assert set(run["bands"][STANDARD]["refused"]) <= {"503"}
    holdback = runs[modes.HOLDBACK]["bands"][CRITICAL]["ttft_p90_s"]
    assert holdback <= 1.5 * unloaded, (holdback, unloaded)
    assert holdback < runs[modes.FLOW_CONTROL]["bands"][CRITICAL]["ttft_p90_s"]
