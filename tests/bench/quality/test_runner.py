from __future__ import annotations

import json
from pathlib import Path

from kvroute.bench.quality.policies.catalog import select
from kvroute.bench.quality.report import write_json
from kvroute.bench.quality.runner import policy_seed, run
from kvroute.bench.quality.workloads import WorkloadSpec


def test_the_json_of_a_run_is_byte_identical_across_runs_and_job_counts(
    tmp_path: Path, tiny_spec: WorkloadSpec
) -> None:
    policies = select("random,sglang-cache-aware,kvroute")
    serial = run([tiny_spec], policies, seed=4)
    parallel = run([tiny_spec], policies, seed=4, jobs=2)
    write_json(serial, tmp_path / "a.json")
    write_json(parallel, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    other = run([tiny_spec], policies, seed=5)
    assert other["results"] != serial["results"]


def test_results_hold_the_workload_the_policies_and_the_metrics(tiny_spec: WorkloadSpec) -> None:
    seen: list[tuple[str, str]] = []
    results = run([tiny_spec], select("round-robin,oracle"), seed=0, progress=lambda w, p: seen.append((w, p)))
    assert seen == [("tiny", "round-robin"), ("tiny", "oracle")]
    assert list(results["results"]["tiny"]) == ["round-robin", "oracle"]
    workload = results["workloads"]["tiny"]
    assert workload["requests"] == 60 and workload["engines"] == 3 and workload["fleet_kv_tokens"] == 3 * 256 * 16
    assert results["results"]["tiny"]["round-robin"]["engine_requests"] == [20, 20, 20]
    assert "wall" not in json.dumps(results)  # nothing that changes from one run to the next
    assert policy_seed("a", "b", 0) != policy_seed("a", "b", 1)
