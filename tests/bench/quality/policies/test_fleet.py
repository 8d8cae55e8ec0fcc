from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.bench.quality.generators import Workload, build
from kvroute.bench.quality.policies.catalog import lookup
from kvroute.bench.quality.policies.configs import ROUND_ROBIN
from kvroute.bench.quality.runner import run_one
from kvroute.bench.quality.workloads import parse_workload
from kvroute.simulator.des.harness import simulate

# Eight prefix groups at a rate where four independent replicas spread each group over several engines.
GROUPS = """\
name: groups
description: shared prefixes, many groups
seed: 5
fleet: {engines: 4, profile: tiny}
arrival:
  - {process: poisson, rate: 40, count: 160}
generator: {kind: shared-prefix, groups: 8, system_tokens: 320, question_tokens: 16, output_tokens: 4}
"""


@pytest.fixture(scope="module")
def groups() -> Workload:
    return build(parse_workload(GROUPS), 0)


def test_one_replica_is_the_policy_itself_and_fleet_keys_round_trip(tmp_path: Path) -> None:
    assert lookup("kvroute@1") is lookup("kvroute")
    fleet = lookup("kvroute@4+sync")
    assert (fleet.name, fleet.key) == ("kvroute@4+sync", "kvroute@4+sync")
    assert "4 replicas with fleet sync" in fleet.summary
    config = tmp_path / "rr.yaml"
    config.write_text(ROUND_ROBIN.document(disaggregated=False))
    assert lookup(f"{config}@2").name == "rr@2"
    with pytest.raises(ValueError, match="at least one replica"):
        lookup("kvroute@0")


def test_fleet_sync_needs_a_policy_on_kvroutes_scheduler(groups: Workload) -> None:
    with pytest.raises(ValueError, match="kvroute's scheduler"):
        lookup("dynamo@2+sync").make(groups.fleet, 0)


def test_replicas_without_sync_lose_affinity_and_sync_restores_it(groups: Workload) -> None:
    alone = run_one(groups, lookup("kvroute"), 0)
    split = run_one(groups, lookup("kvroute@4"), 0)
    synced = run_one(groups, lookup("kvroute@4+sync"), 0)
    assert split["prefix_hit_rate"] < alone["prefix_hit_rate"] - 0.05
    assert synced["prefix_hit_rate"] >= alone["prefix_hit_rate"] - 0.01
    assert synced["requests"] == alone["requests"] == 160


def test_every_request_is_routed_once_by_one_replica(groups: Workload) -> None:
    policy = lookup("kvroute@3+sync").make(groups.fleet, 0)
    result = simulate(groups.fleet.profiles, groups.requests, policy.route, listener=policy, tick_interval=0.05)
    assert result.unfinished == 0
    replicas = policy.replicas  # type: ignore[attr-defined]
    assert [r.in_flight for r in replicas] == [0, 0, 0]
    assert all(r.sync.open_peer_requests == 0 for r in replicas)
